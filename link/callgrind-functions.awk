# Input: callgrind's output files, written with --compress-strings=no and --demangle=no.
# Output: the base name (base-name.awk) of every function of `binary` (the end of its path)
# that ran, once per line it has in the profile.
# `ob=` names the object of the `fn=` lines after it; callgrind marks a recursive call's level
# with `'<n>`; functions without a symbol are `0x<address>`, and `(below main)` is valgrind's.
/^ob=/ { in_binary = substr($0, length($0) - length(binary) + 1) == binary }
/^fn=/ && in_binary {
    name = substr($0, 4)
    sub(/'[0-9]+$/, "", name)
    if (name !~ /^(0x|\(below main\))/) print base_name(name)
}
