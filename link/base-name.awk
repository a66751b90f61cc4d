# A function's linker symbol without the hashes that differ between two builds of the same
# code (they come from compiler flags, features and target): the legacy mangling's trailing
# `17h<hash>E` and the v0 mangling's crate disambiguators `Cs<hash>_`.
function base_name(symbol) {
    sub(/17h[0-9a-f]+E$/, "", symbol)
    gsub(/Cs[0-9A-Za-z]+_/, "C", symbol)
    return symbol
}
