# Input: the numbers of the code pages a process touched (one per line), then
# `nm -S -n -t d --defined-only` of its binary, built with every function on pages of its own.
# Output: the base name (base-name.awk) of every function on a touched page, in address order.
# `start` is the address of the first code page.
NR == FNR { touched[$1] = 1; next }
NF == 4 && $3 ~ /^[tTwW]$/ {
    first = int(($1 - start) / 4096)
    last = int(($1 + ($2 > 0 ? $2 : 1) - 1 - start) / 4096)
    for (page = first; page <= last; page++) {
        if (page in touched) { print base_name($4); break }
    }
}
