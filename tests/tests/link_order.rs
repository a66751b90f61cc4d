//! Release binaries are linked through `link/cc` (`.cargo/config.toml`): the functions that
//! `link/startup-functions.txt` lists for a service come first in its code, in the list's
//! order, and any other link is plain `cc`. Checked on a small C program linked as rustc
//! links (`cc` with the toolchain's lld), so no release build is needed.

use std::path::Path;
use std::process::Command;

use dozen_tests::repository;

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The first two C functions the list gives for the users service (a C symbol is its name: no
/// mangling, no hash).
fn two_c_functions_listed_for_users() -> [String; 2] {
    let list = std::fs::read_to_string(repository().join("link/startup-functions.txt"))
        .expect("link/startup-functions.txt");
    let mut names = list.lines().filter_map(|line| {
        let (name, services) = line.split_once(' ')?;
        let c_function = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name != "main";
        (c_function && services.split(',').any(|service| service == "users")).then_some(name)
    });
    let first = names.next().expect("the list names C functions").to_owned();
    let second = names.next().expect("the list names two C functions").to_owned();
    [first, second]
}

/// Compile a program defining an unlisted function, then the two listed ones in the reverse
/// of the list's order, with a table of pointers to them (relative relocations); link it
/// through `link/cc` to `output` (with `env` added), as rustc would with lld, and run it. The
/// functions' addresses, in the order unlisted, first listed, second listed.
fn link(folder: &Path, output: &Path, [first, second]: &[String; 2], env: &[(&str, &str)]) -> [u64; 3] {
    let source = folder.join("program.c");
    std::fs::write(
        &source,
        format!(
            "int unlisted(void) {{ return 1; }}\n\
             int {second}(void) {{ return 2; }}\n\
             int {first}(void) {{ return 3; }}\n\
             int (*const table[])(void) = {{ unlisted, {second}, {first} }};\n\
             int main(void) {{ int sum = 0; for (int i = 0; i < 3; i++) sum += table[i](); return sum == 6 ? 0 : 1; }}\n"
        ),
    )
    .expect("write the program");
    let object = folder.join("program.o");
    run(Command::new("cc")
        .args(["-c", "-O0", "-fPIE", "-ffunction-sections", "-o"])
        .arg(&object)
        .arg(&source));
    let sysroot = run(Command::new("rustc").args(["--print", "sysroot"]));
    let gcc_ld = Path::new(sysroot.trim()).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld");
    std::fs::create_dir_all(output.parent().expect("the output is in a folder"))
        .expect("make the output's folder");
    run(Command::new(repository().join("link/cc"))
        .envs(env.iter().copied())
        .arg(&object)
        .arg(format!("-B{}", gcc_ld.display()))
        .args(["-fuse-ld=lld", "-pie", "-o"])
        .arg(output));
    run(&mut Command::new(output));
    let symbols = run(Command::new("nm").arg(output));
    let address = |name: &str| {
        symbols
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                let address = fields.next()?;
                (fields.nth(1)? == name).then(|| u64::from_str_radix(address, 16).ok())?
            })
            .unwrap_or_else(|| panic!("{name} is not in {}:\n{symbols}", output.display()))
    };
    [address("unlisted"), address(first), address(second)]
}

fn has_packed_relocations(binary: &Path) -> bool {
    run(Command::new("readelf").arg("-d").arg(binary)).contains("(RELR)")
}

#[test]
fn a_release_service_binary_has_its_listed_functions_first_in_order_and_packed_relocations() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let listed = two_c_functions_listed_for_users();
    // As cargo names the users service's binary before copying it to target/release.
    let binary = folder.path().join("release/deps/dozen_users-0123456789abcdef");
    let [unlisted, first, second] = link(folder.path(), &binary, &listed, &[]);
    assert!(
        first < second && second < unlisted,
        "expected {} < {} < unlisted: {first:#x}, {second:#x}, {unlisted:#x}",
        listed[0],
        listed[1]
    );
    assert!(has_packed_relocations(&binary));
}

#[test]
fn any_other_link_is_plain_cc() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let listed = two_c_functions_listed_for_users();
    for output in [
        "debug/deps/dozen_users-0123456789abcdef",
        "release/deps/hello-0123456789abcdef",
    ] {
        let binary = folder.path().join(output);
        let [unlisted, first, second] = link(folder.path(), &binary, &listed, &[]);
        assert!(
            unlisted < second && second < first,
            "{output}: expected the source's order: {unlisted:#x}, {second:#x}, {first:#x}"
        );
        assert!(!has_packed_relocations(&binary), "{output}");
    }
}

#[test]
fn link_order_off_is_plain_cc() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let listed = two_c_functions_listed_for_users();
    let binary = folder.path().join("release/deps/dozen_users-0123456789abcdef");
    let [unlisted, first, second] = link(folder.path(), &binary, &listed, &[("LINK_ORDER", "off")]);
    assert!(unlisted < second && second < first);
    assert!(!has_packed_relocations(&binary));
}
