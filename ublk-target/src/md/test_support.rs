//! The metadata tests' shared setup: a data disk (and an external metadata
//! file) in a temporary folder, and the parameters to create metadata on it.

use std::fs;

use super::{CreateParams, MdError, MetaDevice, MetaLocation};
use crate::config::MetaDisk;

/// A `size`-byte data disk `disk.img` (and `meta.img` when external) in a
/// folder removed on drop; resource "r0", node "alpha".
pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) params: CreateParams,
}

impl Fixture {
    pub(super) fn new(size: u64, external: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        fs::File::create(&disk).unwrap().set_len(size).unwrap();
        let meta_disk = if external {
            MetaDisk::External(dir.path().join("meta.img"))
        } else {
            MetaDisk::Internal
        };
        let params = CreateParams {
            location: MetaLocation { disk, meta_disk },
            resource: "r0".into(),
            node: "alpha".into(),
            al_extents: 1237,
            device_id: 3,
        };
        Fixture { _dir: dir, params }
    }

    pub(super) fn loc(&self) -> &MetaLocation {
        &self.params.location
    }

    pub(super) fn open(&self) -> Result<MetaDevice, MdError> {
        MetaDevice::open(self.loc(), "r0", "alpha")
    }

    pub(super) fn meta_bytes(&self) -> Vec<u8> {
        fs::read(self.loc().meta_path()).unwrap()
    }

    pub(super) fn patch(&self, offset: u64, f: impl FnOnce(&mut u8)) {
        let path = self.loc().meta_path();
        let mut bytes = fs::read(path).unwrap();
        f(&mut bytes[usize::try_from(offset).unwrap()]);
        fs::write(path, bytes).unwrap();
    }
}
