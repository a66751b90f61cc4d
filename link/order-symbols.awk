# Input: link/startup-functions.txt ("<base name> <services>" per line), then `nm` of the
# objects being linked. Output: "<rank> <symbol>" for each symbol whose base name
# (base-name.awk) the list gives for `service` (every line when `service` is empty), ranked
# as in the list. A listed name is also output as it is: a C function has no hash, its name
# is its symbol.
NR == FNR {
    if (service == "" || index("," $2 ",", "," service ",") > 0) {
        rank[$1] = FNR
        print FNR, $1
    }
    next
}
NF == 3 && $2 ~ /^[tTwW]$/ {
    name = base_name($3)
    if (name in rank) print rank[name], $3
}
