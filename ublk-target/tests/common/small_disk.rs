//! A primary disk that fills up: local writes that fail with ENOSPC.

use super::Cluster;

/// Unmounts the tmpfs of [`primary_disk_on_small_tmpfs`] when dropped.
pub struct Umount(pub std::path::PathBuf);

impl Drop for Umount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// alpha's image moved onto a 24 MiB tmpfs (data sparse, metadata written),
/// so that writes past ~16 MiB fail with ENOSPC, as `two_nodes.rs`'s full
/// disk test does it (the events and handlers tests fail local writes so).
pub fn primary_disk_on_small_tmpfs(c: &Cluster) -> Umount {
    use std::process::Command;
    let small = c.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "rep-test-small"])
        .arg(&small));
    let umount = Umount(small.clone());
    let (img, moved) = (c.img(0), small.join("alpha.img"));
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&moved));
    let skip = (c.disk_bytes - (8 << 20)) >> 20;
    run(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", moved.display()))
        .args(["bs=1M", &format!("skip={skip}"), &format!("seek={skip}")])
        .args(["conv=notrunc", "status=none"]));
    std::fs::remove_file(&img).unwrap();
    std::os::unix::fs::symlink(&moved, &img).unwrap();
    umount
}
