//! The metadata's unit tests: create, open, update and corrupt real
//! metadata files (superblock, activity-log ring, bitmap pages).

use std::fs;

use super::test_support::Fixture;
use super::*;

const SIZE: u64 = 64 << 20;

#[test]
fn create_open_round_trip_internal() {
    let fx = Fixture::new(SIZE, false);
    let dev = MetaDevice::create(&fx.params, false).unwrap();
    let l = *dev.layout();
    assert_eq!(l.kind, MetaKind::Internal);
    assert!(l.data_bytes + l.md_bytes <= SIZE);
    assert_eq!(dev.superblock_offset(), SIZE - 4096);
    assert_eq!(dev.superblock().seq, 1);
    drop(dev);
    // The file keeps its size.
    assert_eq!(fs::metadata(&fx.params.location.disk).unwrap().len(), SIZE);

    let mut dev = fx.open().unwrap();
    let sb = dev.superblock().clone();
    assert_eq!(sb.resource, "r0");
    assert_eq!(sb.node, "alpha");
    assert_eq!(sb.device_id, 3);
    assert_eq!(sb.format_version, FORMAT_VERSION);
    assert_eq!(sb.generations, Generations::just_created());
    assert_eq!(sb.flags, MetaFlags(0));
    assert_eq!(sb.layout, l);
    assert_eq!(
        dev.read_al().unwrap(),
        AlState {
            seq: 0,
            extents: vec![],
            torn_slots: 0
        }
    );
    let (words, bad) = dev.read_bitmap().unwrap();
    assert_eq!(bad, 0);
    assert_eq!(words.len() as u64, l.bm_words());
    assert!(words.iter().all(|&w| w == 0));
    assert_eq!(dev.dirty_bits(), 0);
}

#[test]
fn create_open_round_trip_external() {
    let fx = Fixture::new(SIZE + 1000, true);
    let dev = MetaDevice::create(&fx.params, false).unwrap();
    let l = *dev.layout();
    assert_eq!(l.kind, MetaKind::External);
    assert_eq!(l.data_bytes, SIZE);
    assert_eq!(dev.superblock_offset(), 0);
    drop(dev);
    assert_eq!(
        fs::metadata(fx.loc().meta_path()).unwrap().len(),
        l.md_bytes
    );
    assert_eq!(
        fs::metadata(&fx.params.location.disk).unwrap().len(),
        SIZE + 1000,
        "data disk untouched"
    );
    let mut dev = fx.open().unwrap();
    assert_eq!(dev.layout(), &l);
    assert_eq!(dev.read_al().unwrap().seq, 0);
    // Opening it as internal metadata finds nothing at the end of the data disk.
    let internal = MetaLocation {
        disk: fx.params.location.disk.clone(),
        meta_disk: MetaDisk::Internal,
    };
    let e = MetaDevice::open(&internal, "r0", "alpha").unwrap_err();
    assert!(e.to_string().contains("run create-md"), "{e}");
}

#[test]
fn create_refuses_existing_without_force() {
    let fx = Fixture::new(SIZE, false);
    let mut dev = MetaDevice::create(&fx.params, false).unwrap();
    let mut sb = dev.superblock().clone();
    sb.generations.current = 0xabcd;
    dev.write_superblock(&mut sb).unwrap();
    drop(dev);
    let before = fx.meta_bytes();
    let e = MetaDevice::create(&fx.params, false).unwrap_err();
    assert!(matches!(e, MdError::Exists { valid: true, .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(fx.meta_bytes(), before, "nothing written");
    let dev = MetaDevice::create(&fx.params, true).unwrap();
    assert_eq!(dev.superblock().generations, Generations::just_created());
    drop(dev);
    assert_eq!(fx.open().unwrap().superblock().generations.current, 4);
}

#[test]
fn create_refuses_corrupt_without_force() {
    let fx = Fixture::new(SIZE, false);
    MetaDevice::create(&fx.params, false).unwrap();
    fx.patch(SIZE - 4096 + 100, |b| *b ^= 0xff);
    let e = MetaDevice::create(&fx.params, false).unwrap_err();
    assert!(matches!(e, MdError::Exists { valid: false, .. }), "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
    MetaDevice::create(&fx.params, true).unwrap();
    fx.open().unwrap();
}

#[test]
fn superblock_byte_flip_is_a_checksum_error_and_writes_nothing() {
    let fx = Fixture::new(SIZE, false);
    MetaDevice::create(&fx.params, false).unwrap();
    for off in [8u64, 30, 160, 210, 300, 509] {
        let fx2 = Fixture::new(SIZE, false);
        MetaDevice::create(&fx2.params, false).unwrap();
        fx2.patch(SIZE - 4096 + off, |b| *b ^= 0x10);
        let before = fx2.meta_bytes();
        for res in [
            fx2.open(),
            MetaDevice::open_read_only(fx2.loc(), "r0", "alpha"),
        ] {
            let e = res.unwrap_err();
            assert!(matches!(e, MdError::Checksum { .. }), "offset {off}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains("checksum") && msg.contains("nothing was changed"),
                "{msg}"
            );
            assert!(msg.contains(&format!("offset {}", SIZE - 4096)), "{msg}");
        }
        assert!(fx2.meta_bytes() == before, "file changed");
    }
}

#[test]
fn wrong_magic() {
    let fx = Fixture::new(SIZE, false);
    let e = fx.open().unwrap_err();
    assert!(matches!(e, MdError::NoMetadata { .. }), "{e}");
    assert!(
        e.to_string().contains("no metadata found (wrong magic)"),
        "{e}"
    );
    assert!(e.to_string().contains("run create-md"), "{e}");
    MetaDevice::create(&fx.params, false).unwrap();
    fx.patch(SIZE - 4096, |b| *b ^= 1);
    let before = fx.meta_bytes();
    let e = fx.open().unwrap_err();
    // Something that is not a superblock where it should be, over data:
    // not "run create-md", which would destroy the data.
    assert!(matches!(e, MdError::Resized { .. }), "{e}");
    assert!(e.to_string().contains("Do not run create-md"), "{e}");
    assert!(fx.meta_bytes() == before);
}

#[test]
fn grown_disk_has_no_metadata_at_its_end_and_is_found_below_it() {
    let fx = Fixture::new(SIZE, false);
    let layout = *MetaDevice::create(&fx.params, false).unwrap().layout();
    fs::OpenOptions::new()
        .write(true)
        .open(&fx.params.location.disk)
        .unwrap()
        .set_len(SIZE + 8192)
        .unwrap();
    let dev = fx.open().unwrap();
    assert_eq!(*dev.layout(), layout);
    assert_eq!(dev.superblock_offset(), SIZE - 4096);
}

#[test]
fn foreign_resource_or_node() {
    let fx = Fixture::new(SIZE, false);
    MetaDevice::create(&fx.params, false).unwrap();
    let before = fx.meta_bytes();
    let e = MetaDevice::open(fx.loc(), "r1", "alpha").unwrap_err();
    assert!(
        matches!(
            e,
            MdError::Foreign {
                what: "resource",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("\"r0\"") && e.to_string().contains("\"r1\""),
        "{e}"
    );
    let e = MetaDevice::open(fx.loc(), "r0", "beta").unwrap_err();
    assert!(matches!(e, MdError::Foreign { what: "node", .. }), "{e}");
    assert!(
        e.to_string().contains("\"alpha\"") && e.to_string().contains("\"beta\""),
        "{e}"
    );
    assert!(fx.meta_bytes() == before);
}

#[test]
fn newer_format_version() {
    let fx = Fixture::new(SIZE, false);
    let dev = MetaDevice::create(&fx.params, false).unwrap();
    let mut sb = dev.superblock().clone();
    drop(dev);
    sb.format_version = FORMAT_VERSION + 1;
    let path = fx.loc().meta_path();
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&sb.encode(), SIZE - 4096).unwrap();
    let e = fx.open().unwrap_err();
    assert!(matches!(e, MdError::UnsupportedVersion { .. }), "{e}");
}

#[test]
fn external_data_disk_shrunk() {
    let fx = Fixture::new(SIZE, true);
    MetaDevice::create(&fx.params, false).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&fx.params.location.disk)
        .unwrap()
        .set_len(SIZE / 2)
        .unwrap();
    let e = fx.open().unwrap_err();
    assert!(matches!(e, MdError::DoesNotFit { .. }), "{e}");
}

#[test]
fn external_meta_missing_or_not_ours() {
    let fx = Fixture::new(SIZE, true);
    let e = fx.open().unwrap_err();
    assert!(matches!(e, MdError::MetaFileMissing { .. }), "{e}");
    fs::write(fx.loc().meta_path(), b"important notes").unwrap();
    let e = MetaDevice::create(&fx.params, false).unwrap_err();
    assert!(matches!(e, MdError::NotEmpty { .. }), "{e}");
    assert_eq!(fx.meta_bytes(), b"important notes");
    MetaDevice::create(&fx.params, true).unwrap();
    fx.open().unwrap();
}

#[test]
fn disk_missing_or_too_small() {
    let fx = Fixture::new(SIZE, false);
    fs::remove_file(&fx.params.location.disk).unwrap();
    let e = MetaDevice::create(&fx.params, false).unwrap_err();
    assert!(matches!(e, MdError::DiskMissing { .. }), "{e}");
    assert!(e.to_string().contains("disk.img"), "{e}");
    let e = fx.open().unwrap_err();
    assert!(matches!(e, MdError::DiskMissing { .. }), "{e}");

    let small = Fixture::new(1 << 20, false);
    let e = MetaDevice::create(&small.params, false).unwrap_err();
    assert!(matches!(e, MdError::TooSmall { .. }), "{e}");
    assert!(small.meta_bytes().iter().all(|&b| b == 0));
    let small = Fixture::new(4096, true);
    let e = MetaDevice::create(&small.params, false).unwrap_err();
    assert!(matches!(e, MdError::TooSmall { .. }), "{e}");
}

#[test]
fn write_superblock_bumps_seq_and_persists() {
    let fx = Fixture::new(SIZE, false);
    let mut dev = MetaDevice::create(&fx.params, false).unwrap();
    let mut sb = dev.superblock().clone();
    sb.generations = Generations {
        current: 0x1234,
        bitmap: 0x5678,
        history: [4, 0],
    };
    sb.flags = MetaFlags(MetaFlags::CONSISTENT | MetaFlags::WAS_UP_TO_DATE);
    dev.write_superblock(&mut sb).unwrap();
    assert_eq!(sb.seq, 2);
    dev.write_superblock(&mut sb).unwrap();
    assert_eq!(sb.seq, 3);
    let mut bad = sb.clone();
    bad.layout.al_slots = 9;
    assert!(matches!(
        dev.write_superblock(&mut bad),
        Err(MdError::Invalid(_))
    ));
    let mut bad = sb.clone();
    bad.node = "beta".into();
    assert!(matches!(
        dev.write_superblock(&mut bad),
        Err(MdError::Invalid(_))
    ));
    drop(dev);
    let dev = fx.open().unwrap();
    assert_eq!(dev.superblock(), &sb);
    assert_eq!(
        flag_names(dev.superblock().flags),
        ["CONSISTENT", "WAS_UP_TO_DATE"]
    );
}

#[test]
fn read_only_refuses_writes() {
    let fx = Fixture::new(SIZE, false);
    MetaDevice::create(&fx.params, false).unwrap();
    let before = fx.meta_bytes();
    let mut dev = MetaDevice::open_read_only(fx.loc(), "r0", "alpha").unwrap();
    let mut sb = dev.superblock().clone();
    assert!(matches!(
        dev.write_superblock(&mut sb),
        Err(MdError::ReadOnly { .. })
    ));
    assert!(matches!(
        dev.write_al(1, &[1]),
        Err(MdError::ReadOnly { .. })
    ));
    assert!(matches!(
        dev.write_bitmap_words(0, &[1]),
        Err(MdError::ReadOnly { .. })
    ));
    assert!(matches!(
        dev.write_bitmap_all(&[]),
        Err(MdError::ReadOnly { .. })
    ));
    assert!(fx.meta_bytes() == before);
}

#[test]
fn al_ring_and_torn_slot() {
    let fx = Fixture::new(SIZE, false);
    let mut dev = MetaDevice::create(&fx.params, false).unwrap();
    for seq in 1..=20u64 {
        let extents: Vec<u32> = (0..u32::try_from(seq).unwrap()).collect();
        dev.write_al(seq, &extents).unwrap();
    }
    let al = dev.read_al().unwrap();
    assert_eq!(al.seq, 20);
    assert_eq!(al.extents.len(), 20);
    assert!(
        matches!(dev.write_al(20, &[]), Err(MdError::Invalid(_))),
        "stale seq"
    );
    assert!(
        matches!(dev.write_al(21, &vec![0; 1238]), Err(MdError::Invalid(_))),
        "too many"
    );
    dev.write_al(21, &(0..1237).collect::<Vec<u32>>()).unwrap();
    let l = *dev.layout();
    drop(dev);

    let mut dev = fx.open().unwrap();
    let al = dev.read_al().unwrap();
    assert_eq!((al.seq, al.extents.len()), (21, 1237));
    drop(dev);

    // Tear transaction 21 (slot 5): its second block never made it.
    let slot21 = l.md_offset + l.al_offset + (21 % 8) * l.al_slot_bytes();
    fx.patch(slot21 + 4096 + 17, |b| *b ^= 0x55);
    let mut dev = fx.open().unwrap();
    let al = dev.read_al().unwrap();
    assert_eq!(al.seq, 20);
    assert_eq!(al.extents, (0..20).collect::<Vec<u32>>());
    assert_eq!(al.torn_slots, 1);
    // The next transaction continues after the newest one ever seen.
    dev.write_al(22, &[7]).unwrap();
    assert_eq!(dev.read_al().unwrap().extents, [7]);
}

#[test]
fn al_all_slots_lost() {
    let fx = Fixture::new(SIZE, false);
    let dev = MetaDevice::create(&fx.params, false).unwrap();
    let l = *dev.layout();
    drop(dev);
    fx.patch(l.md_offset + l.al_offset + 8, |b| *b ^= 1);
    let mut dev = fx.open().unwrap();
    let e = dev.read_al().unwrap_err();
    assert!(matches!(e, MdError::AlUnreadable { slots: 8, .. }), "{e}");
}

#[test]
fn corrupt_bitmap_page_reads_as_all_ones() {
    // 300 MiB of data: 3 bitmap pages (127.5 MiB each), the last partial.
    let fx = Fixture::new(300 << 20, false);
    let mut dev = MetaDevice::create(&fx.params, false).unwrap();
    let l = *dev.layout();
    assert_eq!(l.bm_pages, 3);
    dev.write_bitmap_words(5, &[0b1011]).unwrap();
    drop(dev);
    // Damage the last page.
    fx.patch(l.md_offset + l.bm_offset + 2 * 4096 + 100, |b| *b ^= 0x01);
    let before = fx.meta_bytes();
    let mut dev = fx.open().unwrap();
    assert_eq!(dev.bad_bitmap_pages(), 1);
    let (words, bad) = dev.read_bitmap().unwrap();
    assert_eq!(bad, 1);
    assert_eq!(words[5], 0b1011);
    let last_page_first_bit = 2 * 510 * 64;
    let expect = 3 + (l.bm_bits() - last_page_first_bit);
    assert_eq!(
        dev.dirty_bits(),
        expect,
        "tail bits past the data stay clear"
    );
    assert!(fx.meta_bytes() == before, "reading repairs nothing on disk");

    // Writing a word in the bad page rewrites it from the (all-ones) mirror.
    let w = 2 * 510 + 3;
    dev.write_bitmap_words(w, &[0]).unwrap();
    drop(dev);
    let dev = fx.open().unwrap();
    assert_eq!(dev.bad_bitmap_pages(), 0);
    assert_eq!(dev.dirty_bits(), expect - 64);
}

#[test]
fn bitmap_words_across_pages() {
    let fx = Fixture::new(600 << 20, true);
    let mut dev = MetaDevice::create(&fx.params, false).unwrap();
    let l = *dev.layout();
    assert_eq!(l.bm_pages, 5);
    let nwords = l.bm_words();
    let words: Vec<u64> = (0..1200u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        .collect();
    // Words 500..1700 span pages 0, 1, 2 and 3.
    dev.write_bitmap_words(500, &words).unwrap();
    let mut expect = vec![0u64; usize::try_from(nwords).unwrap()];
    expect[500..1700].copy_from_slice(&words);
    assert_eq!(dev.bitmap(), &expect[..]);
    // A second, overlapping write keeps the rest of each page.
    dev.write_bitmap_words(1019, &[u64::MAX, 0]).unwrap();
    expect[1019] = u64::MAX;
    expect[1020] = 0;
    // The very last word, with the tail masked.
    let last = nwords - 1;
    dev.write_bitmap_words(last, &[u64::MAX]).unwrap();
    let tail_bits = l.bm_bits() % 64;
    expect[usize::try_from(last).unwrap()] = if tail_bits == 0 {
        u64::MAX
    } else {
        (1 << tail_bits) - 1
    };
    assert!(matches!(
        dev.write_bitmap_words(nwords, &[1]),
        Err(MdError::Invalid(_))
    ));
    assert!(matches!(
        dev.write_bitmap_words(last, &[1, 1]),
        Err(MdError::Invalid(_))
    ));
    dev.write_bitmap_words(3, &[]).unwrap();
    drop(dev);

    let mut dev = fx.open().unwrap();
    let (got, bad) = dev.read_bitmap().unwrap();
    assert_eq!(bad, 0);
    assert_eq!(got, expect);

    // write_bitmap_all replaces everything.
    let all: Vec<u64> = vec![u64::MAX; expect.len()];
    assert!(matches!(
        dev.write_bitmap_all(&all[1..]),
        Err(MdError::Invalid(_))
    ));
    dev.write_bitmap_all(&all).unwrap();
    drop(dev);
    let dev = fx.open().unwrap();
    assert_eq!(dev.dirty_bits(), l.bm_bits());
}

#[test]
fn flag_names_lists_unknown_bits() {
    assert!(flag_names(MetaFlags(0)).is_empty());
    assert_eq!(
        flag_names(MetaFlags(MetaFlags::AL_CLEAN | 1 << 20)),
        ["AL_CLEAN", "0x100000"]
    );
}
