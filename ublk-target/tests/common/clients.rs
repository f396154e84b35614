//! The small client runs several suites make against a node: growing its
//! backing file, the export's size as nbdinfo sees it, qemu-io commands.

use super::Cluster;

impl Cluster {
    /// Node `i`'s backing file grown (or cut) to `bytes`, as `truncate`.
    pub fn grow_img(&self, i: usize, bytes: u64) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.img(i))
            .unwrap();
        f.set_len(bytes).unwrap();
    }

    /// The size of node `i`'s export, as a new nbdinfo client sees it.
    pub fn nbdinfo_size(&self, i: usize) -> u64 {
        let o = self.client(i, "nbdinfo", &["--json", &self.nbd_uri(i)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["exports"][0]["export-size"].as_u64().unwrap()
    }

    /// `qemu-io -c CMD...` on node `i`'s export, which must succeed with no
    /// command failing; its output.
    pub fn qemu_io(&self, i: usize, cmds: &[&str]) -> String {
        let uri = self.nbd_uri(i);
        let mut args = vec!["-f", "raw", &uri];
        for cmd in cmds {
            args.extend(["-c", cmd]);
        }
        let o = self.client(i, "qemu-io", &args);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success() && !out.contains("fail"),
            "qemu-io {cmds:?}: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    }
}
