//! On-disk metadata, as DRBD keeps it: a superblock, an activity-log ring and
//! a dirty bitmap. See [`layout`] for where each lives, and the submodules for
//! the encodings.
//!
//! Everything goes through [`MetaDevice`], which uses plain positional file
//! I/O (`pread`/`pwrite`) and `fdatasync` after every update. Opening checks
//! the superblock fully (magic, checksum, format version, names, sizes)
//! before anything is written, and a failed check never writes.
//!
//! - [`layout`]: where the superblock, the activity log and the bitmap live;
//! - [`superblock`]: the 512-byte superblock and its checksum;
//! - [`al`]: activity-log transactions (a ring of slots; a torn one falls
//!   back to the previous);
//! - [`bitmap`]: dirty-bitmap pages (a bad page counts as all dirty);
//! - [`resize`]: growing the data area and moving internal metadata to
//!   the new end (`repctl resize`), crash-safe step by step;
//! - `tests`: create, open, update and corrupt real metadata files.

pub mod al;
pub mod bitmap;
mod grown;
pub mod layout;
pub mod resize;
pub mod superblock;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use replication_proto::gen::Generations;
use replication_proto::meta::MetaFlags;

use crate::config::{Config, MetaDisk, Node, AL_EXTENTS_MAX, AL_EXTENTS_MIN, NAME_MAX};
pub use al::AlState;
pub use layout::{Layout, MetaKind};
pub use superblock::{Superblock, FORMAT_VERSION, SB_BYTES};

use al::Slot;
use layout::{BM_PAGE_BYTES, MD_BLOCK};

/// Everything that can go wrong with metadata. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum MdError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("backing disk {path} does not exist; create it first (for a test, e.g. `truncate -s 1G {path}`) or fix `disk` in the config")]
    DiskMissing { path: PathBuf },
    #[error("metadata file {path} does not exist — run create-md")]
    MetaFileMissing { path: PathBuf },
    #[error(
        "no metadata found (wrong magic) in {path} at offset {offset} — run create-md{}",
        if *offset > 0 {
            " (unless this disk was grown while repd was not running: internal metadata is then \
             still at its old end, and repd looks for it only up to 64 GiB below the end; give \
             the disk its old size back (`truncate -s`, `lvreduce`), start repd, grow it again \
             while repd runs and run `repctl resize`)"
        } else {
            ""
        }
    )]
    NoMetadata { path: PathBuf, offset: u64 },
    #[error(
        "no metadata at the end of {path} (offset {offset}) nor in the 64 GiB below it, and that \
         end holds data: the disk seems to have been shrunk, or grown by more than that, since \
         create-md, since internal metadata sits at the end of the disk (or its superblock was \
         overwritten). Give the disk its old size back (`lvextend`/`lvreduce`, `truncate -s`) — \
         nothing was changed — start repd, grow the disk while repd runs and run `repctl resize`. Do not run \
         create-md on it: fresh metadata would overwrite the end of the data and forget the data \
         generations (it refuses without --force)"
    )]
    Resized { path: PathBuf, offset: u64 },
    #[error(
        "the end of {path}, where internal metadata goes ({bytes} bytes from offset {offset}), \
         holds data and no metadata: if this disk was used with repd before, it seems to have \
         been resized (give it back its old size); if it holds a filesystem, create-md would \
         overwrite its end. Refusing; use external metadata (meta-disk = PATH), or --force to \
         overwrite that area"
    )]
    TailHoldsData {
        path: PathBuf,
        offset: u64,
        bytes: u64,
    },
    #[error(
        "superblock checksum mismatch in {path} at offset {offset}: stored {stored:#010x}, computed {computed:#010x}{}; \
         the metadata is corrupt — nothing was changed. Restore it from a backup, or recreate it with \
         `repctl create-md --force` (that forgets the data generations, so the next connect does a full sync)",
        if *version == FORMAT_VERSION { String::new() } else { format!(" (format version field reads {version})") }
    )]
    Checksum {
        path: PathBuf,
        offset: u64,
        stored: u32,
        computed: u32,
        version: u32,
    },
    #[error(
        "the metadata in {path} has format version {found}, but this repctl understands only version {supported}; \
         use the newer build that wrote it — nothing was changed"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "the metadata in {path} belongs to {what} \"{found}\", not \"{expected}\"; check `disk` and `meta-disk` \
         of this node in the config (or --node) — nothing was changed"
    )]
    Foreign {
        path: PathBuf,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("the metadata in {path} is inconsistent: {message} — nothing was changed")]
    BadLayout { path: PathBuf, message: String },
    #[error("the metadata in {path} does not fit: {message}; was the disk resized? — nothing was changed")]
    DoesNotFit { path: PathBuf, message: String },
    #[error(
        "{path} already holds {} metadata (at offset {offset}); refusing to overwrite it. \
         Use --force to overwrite it (that forgets the data generations and the bitmap)",
        if *valid { "valid" } else { "corrupt" }
    )]
    Exists {
        path: PathBuf,
        offset: u64,
        valid: bool,
    },
    #[error(
        "{path} is not empty and does not look like metadata; refusing to overwrite it. \
         Check `meta-disk` in the config, or use --force"
    )]
    NotEmpty { path: PathBuf },
    #[error("{path} is too small: {size} bytes, {what} needs at least {min} bytes")]
    TooSmall {
        path: PathBuf,
        size: u64,
        min: u64,
        what: &'static str,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("the activity log in {path} has no valid transaction in any of its {slots} slots")]
    AlUnreadable { path: PathBuf, slots: u32 },
    #[error("the metadata in {path} was opened read-only")]
    ReadOnly { path: PathBuf },
}

/// Where a node's data and metadata are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaLocation {
    /// The backing disk (data).
    pub disk: PathBuf,
    pub meta_disk: MetaDisk,
}

impl MetaLocation {
    /// The location configured for `node`.
    #[must_use]
    pub fn of(node: &Node) -> Self {
        Self {
            disk: node.disk.clone(),
            meta_disk: node.meta_disk.clone(),
        }
    }

    /// The file that holds the metadata.
    #[must_use]
    pub fn meta_path(&self) -> &Path {
        match &self.meta_disk {
            MetaDisk::Internal => &self.disk,
            MetaDisk::External(p) => p,
        }
    }
}

/// What [`MetaDevice::create`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    pub location: MetaLocation,
    pub resource: String,
    pub node: String,
    pub al_extents: u32,
    pub device_id: u32,
}

impl CreateParams {
    /// Parameters for `node` of `config`.
    #[must_use]
    pub fn from_config(config: &Config, node: &Node) -> Self {
        Self {
            location: MetaLocation::of(node),
            resource: config.resource.name.clone(),
            node: node.name.clone(),
            al_extents: config.sync.al_extents,
            device_id: node.device,
        }
    }
}

/// Names of the set [`MetaFlags`] (DRBD's MDF_* names without the prefix);
/// unknown bits appear as hex.
#[must_use]
pub fn flag_names(flags: MetaFlags) -> Vec<String> {
    const NAMES: [(u32, &str); 9] = [
        (MetaFlags::CONSISTENT, "CONSISTENT"),
        (MetaFlags::WAS_UP_TO_DATE, "WAS_UP_TO_DATE"),
        (MetaFlags::PRIMARY_IND, "PRIMARY_IND"),
        (MetaFlags::CONNECTED_IND, "CONNECTED_IND"),
        (MetaFlags::FULL_SYNC, "FULL_SYNC"),
        (MetaFlags::PEER_OUTDATED, "PEER_OUTDATED"),
        (MetaFlags::CRASHED_PRIMARY, "CRASHED_PRIMARY"),
        (MetaFlags::AL_CLEAN, "AL_CLEAN"),
        (MetaFlags::UNACKED_GEN, "UNACKED_GEN"),
    ];
    let mut out: Vec<String> = NAMES
        .iter()
        .filter(|(bit, _)| flags.has(*bit))
        .map(|(_, n)| (*n).to_owned())
        .collect();
    let known = NAMES.iter().fold(0u32, |acc, (bit, _)| acc | bit);
    for i in 0..32 {
        let bit = 1u32 << i;
        if flags.0 & bit != 0 && known & bit == 0 {
            out.push(format!("{bit:#x}"));
        }
    }
    out
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MdError + 'a {
    move |source| MdError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn to_usize(v: u64, what: &str) -> Result<usize, MdError> {
    usize::try_from(v).map_err(|_| MdError::Invalid(format!("{what} ({v}) does not fit in memory")))
}

/// Size of a regular file or block device.
fn size_of(file: &File, path: &Path) -> Result<u64, MdError> {
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if meta.is_file() {
        Ok(meta.len())
    } else {
        let mut f = file;
        f.seek(SeekFrom::End(0))
            .map_err(io_err("find the size of", path))
    }
}

fn open_existing(path: &Path, writable: bool) -> Result<File, MdError> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                MdError::DiskMissing {
                    path: path.to_owned(),
                }
            } else {
                MdError::Io {
                    op: "open",
                    path: path.to_owned(),
                    source,
                }
            }
        })
}

/// Read the superblock sector at `offset`, or `None` if the file ends first.
/// How much of a disk's end (below its superblock block) is looked at to
/// tell a fresh disk (zeroes: run create-md) from a resized one (data).
const TAIL_LOOK: u64 = 1 << 20;

/// Whether `len` bytes of `file` from `offset` are all zero (a fresh
/// disk's end, where create-md may write internal metadata).
fn all_zero(file: &File, path: &Path, offset: u64, len: u64) -> Result<bool, MdError> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; to_usize(len.min(CHUNK), "a read buffer")?];
    let mut at = offset;
    let end = offset.saturating_add(len);
    while at < end {
        let n = to_usize((end - at).min(CHUNK), "a read")?;
        let chunk = buf
            .get_mut(..n)
            .ok_or_else(|| MdError::Invalid("read size".into()))?;
        file.read_exact_at(chunk, at)
            .map_err(io_err("read the end of", path))?;
        if chunk.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

fn read_sb_sector(
    file: &File,
    path: &Path,
    offset: u64,
) -> Result<Option<[u8; SB_BYTES]>, MdError> {
    let mut buf = [0u8; SB_BYTES];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(MdError::Io {
            op: "read the superblock of",
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn check_name(what: &str, name: &str) -> Result<(), MdError> {
    if name.is_empty() || name.len() > NAME_MAX || name.as_bytes().contains(&0) {
        return Err(MdError::Invalid(format!(
            "{what} name \"{name}\" must be 1..={NAME_MAX} bytes without NUL"
        )));
    }
    Ok(())
}

/// One node's open metadata.
#[derive(Debug)]
pub struct MetaDevice {
    file: File,
    path: PathBuf,
    writable: bool,
    sb: Superblock,
    /// In-memory mirror of the bitmap, so partial pages can be rewritten.
    bitmap: Vec<u64>,
    bad_pages: u64,
    /// Highest AL sequence number known to be on disk.
    al_seq: Option<u64>,
}

/// The metadata file of `location` (the disk itself when internal), its
/// path, the size of the data disk and where the superblock is.
fn open_for_read(
    location: &MetaLocation,
    writable: bool,
) -> Result<(File, PathBuf, u64, u64), MdError> {
    let disk = &location.disk;
    match &location.meta_disk {
        MetaDisk::Internal => {
            let file = open_existing(disk, writable)?;
            let size = size_of(&file, disk)?;
            let end = layout::align_down(size);
            if end < MD_BLOCK {
                return Err(MdError::NoMetadata {
                    path: disk.clone(),
                    offset: 0,
                });
            }
            Ok((file, disk.clone(), size, end - MD_BLOCK))
        }
        MetaDisk::External(meta) => {
            let data = open_existing(disk, false)?;
            let size = size_of(&data, disk)?;
            let file = open_existing(meta, writable).map_err(|e| match e {
                MdError::DiskMissing { path } => MdError::MetaFileMissing { path },
                e => e,
            })?;
            Ok((file, meta.clone(), size, 0))
        }
    }
}

/// The superblock at `sb_abs`. Internal metadata missing where the disk
/// ends, over data, means the disk was resized: create-md would be the
/// wrong advice.
fn read_superblock(
    location: &MetaLocation,
    file: &File,
    path: &Path,
    sb_abs: u64,
) -> Result<Superblock, MdError> {
    let buf = read_sb_sector(file, path, sb_abs)?.ok_or_else(|| MdError::NoMetadata {
        path: path.to_path_buf(),
        offset: sb_abs,
    })?;
    match Superblock::decode(&buf, path, sb_abs) {
        Err(MdError::NoMetadata { path, offset })
            if location.meta_disk == MetaDisk::Internal
                && !all_zero(
                    file,
                    &path,
                    // Near the start of the disk there is less to look at.
                    offset.saturating_sub(TAIL_LOOK),
                    TAIL_LOOK.min(offset) + MD_BLOCK,
                )? =>
        {
            Err(MdError::Resized { path, offset })
        }
        r => r,
    }
}

/// The superblock is of the kind the config says, and of this resource
/// and node.
fn check_owner(
    location: &MetaLocation,
    path: &Path,
    sb: &Superblock,
    resource: &str,
    node: &str,
) -> Result<(), MdError> {
    let expected_kind = match location.meta_disk {
        MetaDisk::Internal => MetaKind::Internal,
        MetaDisk::External(_) => MetaKind::External,
    };
    if sb.layout.kind != expected_kind {
        return Err(MdError::BadLayout {
            path: path.to_path_buf(),
            message: format!(
                "the superblock describes {:?} metadata, but the config says meta-disk = \"{}\"",
                sb.layout.kind, location.meta_disk
            ),
        });
    }
    for (what, found, expected) in [
        ("resource", &sb.resource, resource),
        ("node", &sb.node, node),
    ] {
        if found != expected {
            return Err(MdError::Foreign {
                path: path.to_path_buf(),
                what,
                found: found.clone(),
                expected: expected.to_owned(),
            });
        }
    }
    Ok(())
}

/// What the layout a superblock describes must fit in.
struct Fit<'a> {
    disk: &'a Path,
    disk_size: u64,
    /// Where the superblock ends: internal metadata ends there.
    sb_end: u64,
}

impl Fit<'_> {
    fn check(&self, file: &File, path: &Path, l: &Layout) -> Result<(), MdError> {
        let disk_size = self.disk_size;
        let misfit = |message: String| {
            Err(MdError::DoesNotFit {
                path: path.to_path_buf(),
                message,
            })
        };
        match l.kind {
            MetaKind::Internal if l.data_bytes.checked_add(l.md_bytes) != Some(self.sb_end) => {
                misfit(format!(
                    "data ({} bytes) plus metadata ({} bytes) should end at the superblock's end ({} bytes), \
                     the disk is {disk_size} bytes",
                    l.data_bytes, l.md_bytes, self.sb_end
                ))
            }
            MetaKind::Internal => Ok(()),
            MetaKind::External if l.data_bytes > disk_size => misfit(format!(
                "it describes {} bytes of data, but the disk {} has only {disk_size}",
                l.data_bytes,
                self.disk.display()
            )),
            MetaKind::External => {
                let meta_size = size_of(file, path)?;
                if meta_size < l.md_bytes {
                    return misfit(format!(
                        "the metadata needs {} bytes, but the file has only {meta_size}",
                        l.md_bytes
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The file the metadata of a [`MetaDevice::create`] goes into, its path
/// and the layout that fits the disk.
fn open_for_create(params: &CreateParams) -> Result<(File, PathBuf, Layout), MdError> {
    let disk = &params.location.disk;
    match &params.location.meta_disk {
        MetaDisk::Internal => {
            let file = open_existing(disk, true)?;
            let size = size_of(&file, disk)?;
            let layout = Layout::internal(size, params.al_extents).ok_or(MdError::TooSmall {
                path: disk.clone(),
                size,
                min: Layout::min_internal_disk_bytes(params.al_extents),
                what: "internal metadata plus 1 MiB of data",
            })?;
            Ok((file, disk.clone(), layout))
        }
        MetaDisk::External(meta) => {
            let data = open_existing(disk, false)?;
            let size = size_of(&data, disk)?;
            let layout = Layout::external(size, params.al_extents).ok_or(MdError::TooSmall {
                path: disk.clone(),
                size,
                min: layout::MIN_DATA_BYTES,
                what: "the data area",
            })?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(meta)
                .map_err(io_err("open or create the metadata file", meta))?;
            Ok((file, meta.clone(), layout))
        }
    }
}

/// Whether fresh metadata may go where `layout` puts it: refused over
/// existing metadata or (internal) over data, unless `force`. True when an
/// old superblock is there to wipe first.
fn check_overwrite(
    file: &File,
    path: &Path,
    layout: &Layout,
    force: bool,
) -> Result<bool, MdError> {
    let sb_abs = layout.md_offset + layout.sb_offset();
    let existing = read_sb_sector(file, path, sb_abs)?;
    let has_magic = existing
        .as_ref()
        .is_some_and(|b| superblock::magic_of(b) == superblock::SB_MAGIC);
    if layout.kind == MetaKind::Internal
        && !force
        && !has_magic
        && !all_zero(file, path, layout.md_offset, layout.md_bytes)?
    {
        // Metadata gone from the end (a shrunk disk) or a filesystem
        // there: fresh metadata would destroy data (DRBD's create-md
        // refuses to truncate a filesystem, too).
        return Err(MdError::TailHoldsData {
            path: path.to_path_buf(),
            offset: layout.md_offset,
            bytes: layout.md_bytes,
        });
    }
    match &existing {
        Some(buf) if has_magic && !force => {
            let (stored, computed) = superblock::checksums_of(buf);
            Err(MdError::Exists {
                path: path.to_path_buf(),
                offset: sb_abs,
                valid: stored == computed,
            })
        }
        _ => Ok(has_magic),
    }
}

/// An external metadata file: refused when it holds something else
/// (unless `overwrite`), extended to the layout's size when it is a file.
fn prepare_external(
    file: &File,
    path: &Path,
    layout: &Layout,
    overwrite: bool,
) -> Result<(), MdError> {
    let meta_meta = file.metadata().map_err(io_err("stat", path))?;
    let len = size_of(file, path)?;
    if !overwrite && len > 0 {
        // Refuse to scribble over a file that holds something else.
        let mut head = vec![0u8; to_usize(len.min(MD_BLOCK), "head")?];
        file.read_exact_at(&mut head, 0)
            .map_err(io_err("read", path))?;
        if head.iter().any(|&b| b != 0) {
            return Err(MdError::NotEmpty {
                path: path.to_path_buf(),
            });
        }
    }
    if len < layout.md_bytes {
        if meta_meta.is_file() {
            file.set_len(layout.md_bytes)
                .map_err(io_err("extend the metadata file", path))?;
        } else {
            return Err(MdError::TooSmall {
                path: path.to_path_buf(),
                size: len,
                min: layout.md_bytes,
                what: "the metadata",
            });
        }
    }
    Ok(())
}

impl MetaDevice {
    /// Write fresh metadata: generations "just created", flags 0 (the data
    /// is Inconsistent), a clear bitmap and an empty AL transaction with
    /// seq 0. Refuses to overwrite existing metadata (valid or corrupt)
    /// unless `force`. The internal layout takes the end of the disk; an
    /// external metadata file is created (or extended) as needed.
    ///
    /// # Errors
    /// [`MdError::DiskMissing`], [`MdError::TooSmall`], [`MdError::Exists`],
    /// [`MdError::NotEmpty`], [`MdError::Invalid`], or I/O errors.
    pub fn create(params: &CreateParams, force: bool) -> Result<Self, MdError> {
        check_name("resource", &params.resource)?;
        check_name("node", &params.node)?;
        if !(AL_EXTENTS_MIN..=AL_EXTENTS_MAX).contains(&params.al_extents) {
            return Err(MdError::Invalid(format!(
                "al-extents {} is out of range {AL_EXTENTS_MIN}..={AL_EXTENTS_MAX}",
                params.al_extents
            )));
        }
        let (file, path, layout) = open_for_create(params)?;
        let sb_abs = layout.md_offset + layout.sb_offset();
        let wipe_old = check_overwrite(&file, &path, &layout, force)?;
        if layout.kind == MetaKind::External {
            prepare_external(&file, &path, &layout, force || wipe_old)?;
        }
        if wipe_old {
            // Invalidate the old superblock first, so a crash half-way
            // leaves "no metadata" rather than an old superblock pointing at
            // new, clean bitmap pages.
            file.write_all_at(&[0u8; SB_BYTES], sb_abs)
                .map_err(io_err("write", &path))?;
            file.sync_data().map_err(io_err("sync", &path))?;
        }
        let dev = MetaDevice {
            file,
            path,
            writable: true,
            sb: Superblock {
                format_version: FORMAT_VERSION,
                seq: 0,
                resource: params.resource.clone(),
                node: params.node.clone(),
                layout,
                generations: Generations::just_created(),
                flags: MetaFlags(0),
                device_id: params.device_id,
                promoted_at_ms: 0,
            },
            bitmap: vec![0; to_usize(layout.bm_words(), "the bitmap")?],
            bad_pages: 0,
            al_seq: None,
        };
        dev.write_fresh()
    }

    /// Writes the fresh metadata of a [`MetaDevice::create`]: the activity
    /// log and the bitmap, then the superblock, the commit point.
    fn write_fresh(mut self) -> Result<Self, MdError> {
        let layout = self.sb.layout;
        // AL: an empty transaction 0 in slot 0, every other slot blank.
        let slot_bytes = to_usize(layout.al_slot_bytes(), "an AL slot")?;
        let mut ring = al::encode_tx(0, &[], slot_bytes);
        ring.resize(to_usize(layout.al_bytes(), "the AL")?, 0);
        self.file
            .write_all_at(&ring, layout.md_offset + layout.al_offset)
            .map_err(io_err("write the activity log of", &self.path))?;
        self.al_seq = Some(0);

        // Bitmap: every page valid and clear (writes without syncing each).
        self.write_bitmap_pages(0, layout.bm_pages)?;
        self.file.sync_data().map_err(io_err("sync", &self.path))?;

        // The superblock last: it is the commit point.
        let mut sb = self.sb.clone();
        self.store_superblock(&mut sb)?;
        Ok(self)
    }

    /// Open existing metadata for reading and writing. Checks magic,
    /// checksum, format version, that it belongs to `resource` and `node`,
    /// and that its sizes fit the disks. Writes nothing.
    ///
    /// # Errors
    /// See [`MdError`]; every check failure leaves the files untouched.
    pub fn open(location: &MetaLocation, resource: &str, node: &str) -> Result<Self, MdError> {
        Self::open_mode(location, resource, node, true)
    }

    /// `repctl attach`: clears a write-back error the kernel kept for the
    /// metadata's file from before the detach (see
    /// `crate::disk::InlineDisk::clear_stale_write_error`; a descriptor
    /// opened anew is told an error nobody has seen yet). An error when the
    /// disk fails a flush now.
    pub(crate) fn clear_stale_write_error(&self) -> io::Result<bool> {
        crate::disk::clear_stale_write_error(&self.file)
    }

    /// Like [`MetaDevice::open`], but with the files opened read-only (for
    /// inspection, e.g. `repctl dump-md`); every write method fails.
    ///
    /// # Errors
    /// See [`MetaDevice::open`].
    pub fn open_read_only(
        location: &MetaLocation,
        resource: &str,
        node: &str,
    ) -> Result<Self, MdError> {
        Self::open_mode(location, resource, node, false)
    }

    fn open_mode(
        location: &MetaLocation,
        resource: &str,
        node: &str,
        writable: bool,
    ) -> Result<Self, MdError> {
        let (file, path, disk_size, sb_abs) = open_for_read(location, writable)?;
        let sb_abs = resize::follow_locator(&file, &path, sb_abs)?;
        let (sb_abs, sb) = match read_superblock(location, &file, &path, sb_abs) {
            // Not at the end: the disk may have grown while repd was
            // stopped (see `grown`).
            Err(e @ (MdError::Resized { .. } | MdError::NoMetadata { .. }))
                if location.meta_disk == MetaDisk::Internal && sb_abs > 0 =>
            {
                let Some((at, sb)) = grown::find_below(&file, &path, sb_abs, resource, node)?
                else {
                    return Err(e);
                };
                tracing::warn!(
                    path = %path.display(),
                    superblock = at,
                    data_bytes = sb.layout.data_bytes,
                    "internal metadata found below the end of the disk, which grew while repd was \
                     stopped: serving the old size; run `repctl resize` to move the metadata to \
                     the new end and grow"
                );
                (at, sb)
            }
            r => (sb_abs, r?),
        };
        check_owner(location, &path, &sb, resource, node)?;
        let fits = Fit {
            disk: &location.disk,
            disk_size,
            sb_end: sb_abs + MD_BLOCK,
        };
        fits.check(&file, &path, &sb.layout)?;
        let mut dev = MetaDevice {
            file,
            path,
            writable,
            sb,
            bitmap: Vec::new(),
            bad_pages: 0,
            al_seq: None,
        };
        dev.read_bitmap()?;
        // Learn the newest AL seq so write_al can refuse going backwards; an
        // unreadable AL is reported by read_al, not here.
        if let Ok(al) = dev.read_al() {
            dev.al_seq = Some(al.seq);
        }
        Ok(dev)
    }

    /// The metadata file (the backing disk itself for internal metadata).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current superblock.
    #[must_use]
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The layout.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.sb.layout
    }

    /// Absolute offset of the superblock in [`MetaDevice::path`].
    #[must_use]
    pub fn superblock_offset(&self) -> u64 {
        self.sb.layout.md_offset + self.sb.layout.sb_offset()
    }

    fn check_writable(&self) -> Result<(), MdError> {
        if self.writable {
            Ok(())
        } else {
            Err(MdError::ReadOnly {
                path: self.path.clone(),
            })
        }
    }

    /// Persist `sb` (generations, flags, device id may change; the names,
    /// format and layout may not). Sets `sb.seq` to the next sequence number,
    /// writes the sector with one aligned write, then fdatasyncs.
    ///
    /// # Errors
    /// [`MdError::Invalid`] if an immutable field changed, [`MdError::ReadOnly`],
    /// or I/O errors.
    pub fn write_superblock(&mut self, sb: &mut Superblock) -> Result<(), MdError> {
        self.check_writable()?;
        if sb.layout != self.sb.layout
            || sb.resource != self.sb.resource
            || sb.node != self.sb.node
            || sb.format_version != self.sb.format_version
        {
            return Err(MdError::Invalid(
                "the superblock's names, format version and layout cannot be changed in place"
                    .to_owned(),
            ));
        }
        self.store_superblock(sb)
    }

    fn store_superblock(&mut self, sb: &mut Superblock) -> Result<(), MdError> {
        sb.seq = self.sb.seq.wrapping_add(1);
        let buf = sb.encode();
        let at = self.superblock_offset();
        self.file
            .write_all_at(&buf, at)
            .map_err(io_err("write the superblock of", &self.path))?;
        self.file.sync_data().map_err(io_err("sync", &self.path))?;
        self.sb = sb.clone();
        Ok(())
    }

    /// The newest valid activity-log transaction. Torn slots are skipped
    /// (and counted in [`AlState::torn_slots`]).
    ///
    /// # Errors
    /// [`MdError::AlUnreadable`] if no slot holds a valid transaction, or I/O
    /// errors.
    pub fn read_al(&mut self) -> Result<AlState, MdError> {
        let l = self.sb.layout;
        let mut ring = vec![0u8; to_usize(l.al_bytes(), "the AL")?];
        self.file
            .read_exact_at(&mut ring, l.md_offset + l.al_offset)
            .map_err(io_err("read the activity log of", &self.path))?;
        let slot_bytes = to_usize(l.al_slot_bytes(), "an AL slot")?;
        let mut best: Option<(u64, Vec<u32>)> = None;
        let mut torn = 0;
        for (i, slot) in (0u64..).zip(ring.chunks_exact(slot_bytes)) {
            match al::decode_tx(slot, l.al_extents) {
                Slot::Blank => {}
                Slot::Torn => torn += 1,
                Slot::Valid { seq, extents } => {
                    if seq % u64::from(l.al_slots) != i {
                        // A valid transaction in the wrong slot: not ours.
                        torn += 1;
                    } else if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                        best = Some((seq, extents));
                    }
                }
            }
        }
        let (seq, extents) = best.ok_or_else(|| MdError::AlUnreadable {
            path: self.path.clone(),
            slots: l.al_slots,
        })?;
        self.al_seq = Some(self.al_seq.map_or(seq, |s| s.max(seq)));
        Ok(AlState {
            seq,
            extents,
            torn_slots: torn,
        })
    }

    /// Write AL transaction `seq` (which must be newer than any on disk)
    /// naming the active `extents`, into slot `seq % slots`, then fdatasync.
    /// Data writes to an extent must not start before this returns.
    ///
    /// # Errors
    /// [`MdError::Invalid`] for too many extents or a stale `seq`,
    /// [`MdError::ReadOnly`], or I/O errors.
    pub fn write_al(&mut self, seq: u64, extents: &[u32]) -> Result<(), MdError> {
        self.check_writable()?;
        let l = self.sb.layout;
        if extents.len() > to_usize(u64::from(l.al_extents), "al-extents")? {
            return Err(MdError::Invalid(format!(
                "{} active extents do not fit an AL transaction of {}",
                extents.len(),
                l.al_extents
            )));
        }
        if let Some(last) = self.al_seq {
            if seq <= last {
                return Err(MdError::Invalid(format!(
                    "AL transaction {seq} is not newer than {last}, already on disk"
                )));
            }
        }
        let slot = seq % u64::from(l.al_slots);
        let buf = al::encode_tx(seq, extents, to_usize(l.al_slot_bytes(), "an AL slot")?);
        let at = l.md_offset + l.al_offset + slot * l.al_slot_bytes();
        self.file
            .write_all_at(&buf, at)
            .map_err(io_err("write the activity log of", &self.path))?;
        self.file.sync_data().map_err(io_err("sync", &self.path))?;
        self.al_seq = Some(seq);
        Ok(())
    }

    /// Re-read the whole bitmap from disk. Pages that fail their checks are
    /// read as all ones (every block dirty) and counted. Also refreshes the
    /// in-memory mirror.
    ///
    /// # Errors
    /// I/O errors only.
    pub fn read_bitmap(&mut self) -> Result<(Vec<u64>, u64), MdError> {
        let l = self.sb.layout;
        let nwords = to_usize(l.bm_words(), "the bitmap")?;
        let mut words = vec![0u64; nwords];
        let mut bad = 0u64;
        const CHUNK_PAGES: u64 = 256;
        let mut page = 0u64;
        let mut chunks = words.chunks_mut(bitmap::WORDS);
        while page < l.bm_pages {
            let n = CHUNK_PAGES.min(l.bm_pages - page);
            let mut buf = vec![0u8; to_usize(n * BM_PAGE_BYTES, "a bitmap chunk")?];
            self.file
                .read_exact_at(&mut buf, l.md_offset + l.bm_offset + page * BM_PAGE_BYTES)
                .map_err(io_err("read the bitmap of", &self.path))?;
            for (i, pbuf) in (page..).zip(buf.chunks_exact(to_usize(BM_PAGE_BYTES, "a page")?)) {
                let Some(out) = chunks.next() else { break };
                if !bitmap::decode_page(pbuf, i, out) {
                    out.fill(u64::MAX);
                    bad += 1;
                }
            }
            page += n;
        }
        mask_tail(&mut words, l.bm_bits());
        self.bitmap.clone_from(&words);
        self.bad_pages = bad;
        Ok((words, bad))
    }

    /// The in-memory bitmap mirror (as last read or written).
    #[must_use]
    pub fn bitmap(&self) -> &[u64] {
        &self.bitmap
    }

    /// Bitmap pages found damaged by the last read (read as all ones).
    #[must_use]
    pub fn bad_bitmap_pages(&self) -> u64 {
        self.bad_pages
    }

    /// Number of set bits in the bitmap mirror.
    #[must_use]
    pub fn dirty_bits(&self) -> u64 {
        self.bitmap.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Replace words `first_word ..` of the bitmap with `words`, rewrite the
    /// pages they touch (the rest of each page comes from the mirror), then
    /// fdatasync. Bits past the end of the data are kept clear.
    ///
    /// # Errors
    /// [`MdError::Invalid`] if the range runs past the bitmap,
    /// [`MdError::ReadOnly`], or I/O errors.
    pub fn write_bitmap_words(&mut self, first_word: u64, words: &[u64]) -> Result<(), MdError> {
        self.check_writable()?;
        if words.is_empty() {
            return Ok(());
        }
        let l = self.sb.layout;
        let count = words.len() as u64;
        let end = first_word
            .checked_add(count)
            .filter(|&e| e <= l.bm_words())
            .ok_or_else(|| {
                MdError::Invalid(format!(
                    "bitmap words {first_word}..+{count} run past the end ({} words)",
                    l.bm_words()
                ))
            })?;
        let start = to_usize(first_word, "a bitmap index")?;
        if let Some(dst) = self.bitmap.get_mut(start..start + words.len()) {
            dst.copy_from_slice(words);
        }
        mask_tail(&mut self.bitmap, l.bm_bits());
        let wpp = layout::BM_WORDS_PER_PAGE;
        let first_page = first_word / wpp;
        let last_page = (end - 1) / wpp;
        self.write_bitmap_pages(first_page, last_page + 1)?;
        self.file.sync_data().map_err(io_err("sync", &self.path))
    }

    /// Replace the whole bitmap (`words.len()` must equal the layout's word
    /// count), write every page, then fdatasync.
    ///
    /// # Errors
    /// [`MdError::Invalid`] on a length mismatch, [`MdError::ReadOnly`], or
    /// I/O errors.
    pub fn write_bitmap_all(&mut self, words: &[u64]) -> Result<(), MdError> {
        self.check_writable()?;
        let l = self.sb.layout;
        if words.len() as u64 != l.bm_words() {
            return Err(MdError::Invalid(format!(
                "bitmap has {} words, {} given",
                l.bm_words(),
                words.len()
            )));
        }
        self.bitmap.copy_from_slice(words);
        mask_tail(&mut self.bitmap, l.bm_bits());
        self.write_bitmap_pages(0, l.bm_pages)?;
        self.bad_pages = 0;
        self.file.sync_data().map_err(io_err("sync", &self.path))
    }

    /// Encode pages `from..to` from the mirror and write them (no sync).
    fn write_bitmap_pages(&mut self, from: u64, to: u64) -> Result<(), MdError> {
        let l = self.sb.layout;
        const CHUNK_PAGES: u64 = 256;
        let wpp = bitmap::WORDS;
        let mut page = from;
        while page < to {
            let n = CHUNK_PAGES.min(to - page);
            let mut buf = Vec::with_capacity(to_usize(n * BM_PAGE_BYTES, "a bitmap chunk")?);
            for p in page..page + n {
                let start = to_usize(p, "a page index")?.saturating_mul(wpp);
                let words = self.bitmap.get(start..).unwrap_or_default();
                bitmap::encode_page(
                    &mut buf,
                    p,
                    words.get(..wpp.min(words.len())).unwrap_or_default(),
                );
            }
            self.file
                .write_all_at(&buf, l.md_offset + l.bm_offset + page * BM_PAGE_BYTES)
                .map_err(io_err("write the bitmap of", &self.path))?;
            page += n;
        }
        Ok(())
    }
}

/// Clear the bits at and past `bits` in the last word.
fn mask_tail(words: &mut [u64], bits: u64) {
    let rem = bits % 64;
    if rem != 0 {
        if let Some(last) = words.last_mut() {
            *last &= (1u64 << rem) - 1;
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod test_support;
