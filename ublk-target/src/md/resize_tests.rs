//! Growing metadata on real files: the moved layout, the bits of the new
//! region, and a crash after every step of the move.

use std::fs;
use std::os::unix::fs::FileExt;

use super::*;
use crate::md::test_support::Fixture;

const OLD: u64 = 64 << 20;
const NEW: u64 = 96 << 20;

// The resize tests' own setup on the shared fixture.
impl Fixture {
    /// Metadata with some bits, an AL transaction and a data pattern, then
    /// the disk grown to `NEW` bytes.
    fn prepared(&self) -> (MetaDevice, Vec<u8>) {
        let mut md = MetaDevice::create(&self.params, false).unwrap();
        md.write_bitmap_words(0, &[0b1011, 0, u64::MAX]).unwrap();
        md.write_al(1, &[3, 7]).unwrap();
        let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&self.params.location.disk)
            .unwrap();
        f.write_all_at(&data, 1 << 20).unwrap();
        f.set_len(NEW).unwrap();
        (md, data)
    }
    fn data_intact(&self, data: &[u8]) {
        let f = fs::File::open(&self.params.location.disk).unwrap();
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, 1 << 20).unwrap();
        assert!(back == data, "data changed");
    }
}

#[test]
fn internal_move_grows_and_keeps_bits_and_al() {
    let fx = Fixture::new(OLD, false);
    let (mut md, data) = fx.prepared();
    let old = *md.layout();
    let room = room_bytes(&fx.params.location, 1237).unwrap();
    let new = md
        .grow(&fx.params.location, room, GrowOptions::default())
        .unwrap();
    assert_eq!(new.data_bytes, room);
    drop(md);
    let mut md = fx.open().unwrap();
    assert_eq!(*md.layout(), new);
    assert_eq!(md.superblock_offset(), NEW - 4096);
    let words = md.bitmap().to_vec();
    assert_eq!(&words[..3], &[0b1011, 0, u64::MAX]);
    // Every block from the old data end to the new one is out of sync.
    let dirty_new = md.dirty_bits() - 3 - 64;
    assert_eq!(dirty_new, (room - old.data_bytes) / 4096);
    let al = md.read_al().unwrap();
    assert_eq!((al.seq, al.extents), (1, vec![3, 7]));
    // No second superblock is left at the old place.
    let f = fs::File::open(&fx.params.location.disk).unwrap();
    let mut sector = [0u8; 512];
    f.read_exact_at(&mut sector, old.md_offset + old.sb_offset())
        .unwrap();
    assert!(sector.iter().all(|&b| b == 0));
    fx.data_intact(&data);
}

#[test]
fn assume_clean_marks_only_the_old_metadata_area() {
    let fx = Fixture::new(OLD, false);
    let (mut md, _) = fx.prepared();
    let old = *md.layout();
    let room = room_bytes(&fx.params.location, 1237).unwrap();
    let opts = GrowOptions {
        assume_clean: true,
        stop_after_step: None,
    };
    md.grow(&fx.params.location, room, opts).unwrap();
    assert_eq!(md.dirty_bits() - 3 - 64, old.md_bytes / 4096);
}

#[test]
fn a_crash_after_each_step_leaves_a_startable_layout() {
    for step in 1..=GROW_STEPS {
        let fx = Fixture::new(OLD, false);
        let (mut md, data) = fx.prepared();
        let old = *md.layout();
        let room = room_bytes(&fx.params.location, 1237).unwrap();
        let opts = GrowOptions {
            assume_clean: false,
            stop_after_step: Some(step),
        };
        let r = md.grow(&fx.params.location, room, opts);
        drop(md);
        let mut md = fx.open().unwrap();
        let expected = if step >= 4 { room } else { old.data_bytes };
        assert_eq!(md.layout().data_bytes, expected, "step {step}: {r:?}");
        assert_eq!(&md.bitmap()[..3], &[0b1011, 0, u64::MAX], "step {step}");
        assert_eq!(md.read_al().unwrap().extents, vec![3, 7], "step {step}");
        fx.data_intact(&data);
        // And the move can be run again to the end.
        if step < 4 {
            md.grow(&fx.params.location, room, GrowOptions::default())
                .unwrap();
            drop(md);
            assert_eq!(fx.open().unwrap().layout().data_bytes, room, "step {step}");
        }
    }
}

#[test]
fn a_grow_too_small_to_move_is_refused() {
    let fx = Fixture::new(OLD, false);
    let (mut md, _) = fx.prepared();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&fx.params.location.disk)
        .unwrap();
    f.set_len(OLD + 8192).unwrap();
    let room = room_bytes(&fx.params.location, 1237).unwrap();
    let e = md
        .grow(&fx.params.location, room, GrowOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("grow it by at least"), "{e}");
    let e = md
        .grow(&fx.params.location, NEW, GrowOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
    let e = md
        .grow(&fx.params.location, 4096, GrowOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("above the current"), "{e}");
}

#[test]
fn external_grow_extends_the_bitmap() {
    let fx = Fixture::new(OLD, true);
    let (mut md, _) = fx.prepared();
    let room = room_bytes(&fx.params.location, 1237).unwrap();
    assert_eq!(room, NEW);
    for step in [1, 3] {
        let opts = GrowOptions {
            assume_clean: true,
            stop_after_step: Some(step),
        };
        assert!(md.grow(&fx.params.location, room, opts).is_err());
        md = fx.open().unwrap();
        assert_eq!(md.layout().data_bytes, OLD);
    }
    let opts = GrowOptions {
        assume_clean: true,
        stop_after_step: None,
    };
    md.grow(&fx.params.location, room, opts).unwrap();
    let md = fx.open().unwrap();
    assert_eq!(md.layout().data_bytes, NEW);
    assert_eq!(md.dirty_bits(), 3 + 64);
}

#[test]
fn set_bits_whole_words_and_edges() {
    let mut w = vec![0u64; 4];
    set_bits(&mut w, 3, 5);
    assert_eq!(w[0], 0b11000);
    set_bits(&mut w, 60, 200);
    assert_eq!(w[0] >> 60, 0xF);
    assert_eq!(w[1], u64::MAX);
    assert_eq!(w[2], u64::MAX);
    assert_eq!(w[3], 0xFF);
    set_bits(&mut w, 250, 10_000);
    assert_eq!(w[3] >> 58, 0x3F);
}

/// DRBD's check-resize: a disk grown while repd was stopped has its
/// metadata below the new end; `open` finds it there (the old size, bits
/// and AL as they were) and `grow` then moves it to the new end.
#[test]
fn a_disk_grown_while_stopped_is_found_below_the_end_and_grows() {
    let fx = Fixture::new(OLD, false);
    let (md, data) = fx.prepared();
    let old = *md.layout();
    drop(md);
    let mut md = fx.open().unwrap();
    assert_eq!(*md.layout(), old);
    assert_eq!(md.superblock_offset(), OLD - 4096);
    assert_eq!(md.bitmap()[..3], [0b1011, 0, u64::MAX]);
    assert_eq!(md.read_al().unwrap().seq, 1);
    let room = room_bytes(&fx.params.location, 1237).unwrap();
    md.grow(&fx.params.location, room, GrowOptions::default())
        .unwrap();
    drop(md);
    let md = fx.open().unwrap();
    assert_eq!(md.layout().data_bytes, room);
    assert_eq!(md.superblock_offset(), NEW - 4096);
    fx.data_intact(&data);
}

/// A superblock is taken only where its own layout puts it: a copy of it
/// elsewhere (data that holds a disk image, say) is not, and without the
/// real one the error says how to recover.
#[test]
fn a_copy_of_a_superblock_at_another_place_is_not_taken() {
    let fx = Fixture::new(OLD, false);
    let (md, _) = fx.prepared();
    drop(md);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fx.params.location.disk)
        .unwrap();
    let mut sector = [0u8; 4096];
    f.read_exact_at(&mut sector, OLD - 4096).unwrap();
    f.write_all_at(&sector, 8 << 20).unwrap();
    f.write_all_at(&[0u8; 4096], OLD - 4096).unwrap();
    let e = MetaDevice::open(&fx.params.location, "r0", "alpha").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("give the disk its old size back"), "{text}");
}
