//! Container images for the tests that run dozen from them (`tests/tests/containers.rs`,
//! `tests/tests/compose.rs`), and the podman calls they share. The six services' images are
//! packaged by `deploy/build-images` from the binaries this workspace built; the stand-in
//! (`tests/compose/Containerfile.stand-in`) takes the place of images no registry here can
//! serve. Everything is built offline, tagged uniquely for the run and removed on drop.

use std::process::Output;
use std::time::Instant;

use crate::process::{SERVICES, binary};
use crate::repository;

/// Run podman with `args`; its output, whatever the exit status.
pub async fn podman(args: &[&str]) -> Output {
    tokio::process::Command::new("podman")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run podman (scripts/backing-services installs it): {e}"))
}

/// Run podman and require success; its standard output, trimmed.
pub async fn podman_ok(args: &[&str]) -> String {
    let output = podman(args).await;
    assert!(
        output.status.success(),
        "podman {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        printed(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// What a command printed, standard output then standard error.
pub fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A temporary folder anyone may write to, as a container's user may not be the test's.
pub fn world_writable_folder() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let folder = tempfile::tempdir().expect("a temporary folder");
    std::fs::set_permissions(folder.path(), std::fs::Permissions::from_mode(0o1777))
        .expect("opening the folder to every user");
    folder
}

/// The images one run built; removed on drop, whether the test passed or not.
#[derive(Debug)]
pub struct Images {
    /// Every image's name starts with this.
    pub prefix: String,
    /// Every image's tag: unique per run.
    pub tag: String,
    built: Vec<String>,
}

impl Images {
    /// Build every service's image, `<prefix><service>:<tag>`, from the binaries next to this
    /// test.
    pub async fn build(prefix: &str, tag: &str) -> Self {
        let binaries = binary("dozen-gateway")
            .parent()
            .expect("the binaries' folder")
            .to_path_buf();
        let target = binaries.parent().expect("the target folder").to_path_buf();
        let started = Instant::now();
        let output = tokio::process::Command::new(repository().join("deploy/build-images"))
            .arg("--binaries")
            .arg(&binaries)
            .args(["--prefix", prefix, "--tag", tag])
            .env("CARGO_TARGET_DIR", &target)
            .kill_on_drop(true)
            .output()
            .await
            .expect("deploy/build-images runs");
        // Named before the check: whatever got built is removed, even after a failure halfway.
        let images = Self {
            prefix: prefix.to_owned(),
            tag: tag.to_owned(),
            built: SERVICES
                .iter()
                .map(|(service, _)| format!("{prefix}{service}:{tag}"))
                .collect(),
        };
        assert!(
            output.status.success(),
            "deploy/build-images failed ({}):\n{}",
            output.status,
            printed(&output)
        );
        eprintln!("built six images in {:.1?}", started.elapsed());
        images
    }

    /// The image of `service`.
    pub fn of(&self, service: &str) -> String {
        format!("{}{service}:{}", self.prefix, self.tag)
    }

    /// Build the stand-in image from this machine's static busybox (Debian's busybox-static);
    /// its name.
    pub async fn build_stand_in(&mut self) -> String {
        let image = format!("{}stand-in:{}", self.prefix, self.tag);
        let busybox = tempfile::tempdir().expect("a temporary folder");
        std::fs::copy("/bin/busybox", busybox.path().join("busybox")).unwrap_or_else(|e| {
            panic!("no /bin/busybox (scripts/backing-services installs busybox-static): {e}")
        });
        let context = tempfile::tempdir().expect("a temporary folder");
        self.built.push(image.clone());
        let output = tokio::process::Command::new("buildah")
            .args(["build", "--quiet", "--layers=false", "--file"])
            .arg(repository().join("tests/compose/Containerfile.stand-in"))
            .arg("--build-context")
            .arg(format!("busybox={}", busybox.path().display()))
            .args(["--tag", &image])
            .arg(context.path())
            .kill_on_drop(true)
            .output()
            .await
            .expect("buildah runs");
        assert!(
            output.status.success(),
            "building the stand-in image failed ({}):\n{}",
            output.status,
            printed(&output)
        );
        image
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        // Synchronous: this may run while a failed test unwinds, outside any runtime.
        let _ = std::process::Command::new("podman")
            .args(["rmi", "--force"])
            .args(&self.built)
            .output();
    }
}
