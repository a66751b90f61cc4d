# A function's linker symbol without what differs between two builds of the same code (it
# comes from compiler flags, features and target): in v0 names, the crates' disambiguators
# (`Cs<hash>_`) and, as they shift with those, back-references (`B<offset>_`); in legacy names,
# the trailing `17h<hash>E`; in both, the number LTO gives each local copy of a function
# (`.<n>`). A C function's symbol is its name.
function base_name(symbol) {
    if (symbol ~ /^_R/) {
        sub(/\.[0-9]+$/, "", symbol)
        gsub(/Cs[0-9A-Za-z]+_/, "C", symbol)
        gsub(/B[0-9A-Za-z]*_/, "B_", symbol)
    } else if (symbol ~ /^_ZN/) {
        sub(/\.[0-9]+$/, "", symbol)
        sub(/17h[0-9a-f]+E$/, "", symbol)
    }
    return symbol
}
