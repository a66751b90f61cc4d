# Input: link/startup-functions.txt ("<base name> <services>" per line), then `nm` of the
# objects being linked. Output: "<rank> <symbol>" for each symbol whose base name
# (base-name.awk) the list gives, ranked as in the list, the functions it gives for `service`
# (all, when `service` is empty) before those it gives for others only: another service's
# start-up code is often this one's too, under another instance's name. A listed name is also
# output as it is: a C function has no hash, its name is its symbol.
NR == FNR {
    rank[$1] = FNR
    if (service != "" && index("," $2 ",", "," service ",") == 0) rank[$1] += 1000000
    print rank[$1], $1
    next
}
NF == 3 && $2 ~ /^[tTwW]$/ {
    name = base_name($3)
    if (name in rank) print rank[name], $3
}
