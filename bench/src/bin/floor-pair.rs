//! `floor-pair`: the least a protocol C replica costs on this machine.
//!
//! It serves an NBD export through repd's own NBD frontend
//! (`ublk_target::nbd`), but behind it there is no replication engine: no
//! state machine, no activity log, no bitmap, no resync, no recovery. A
//! write goes to the local file (O_DIRECT, a pool of threads doing plain
//! `pwrite`) and, in `replicated` mode, at the same time over loopback TCP
//! to a Secondary (threads in the same process, with their own listener,
//! socket and file), which checks the frame's CRC32C, writes it and acks;
//! the NBD reply goes out once both are done, as protocol C requires. In
//! `standalone` mode only the local write happens.
//!
//! What it is for: nbd-bench's `--floor` rows put it beside repd, so the
//! same run shows how much of protocol C's cost against StandAlone is the
//! unavoidable work of a second copy on the same machine (a loopback
//! transfer, a checksum on each side, the Secondary's write) and how much
//! is repd's. It is a measuring instrument, not a replicated device: it
//! has none of the guarantees after a failure.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use ublk_target::disk::AlignedBuf;
use ublk_target::frontend::{BlockBackend, IoRequest, Reply};
use ublk_target::nbd::NbdServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Local writes only.
    Standalone,
    /// Local write and a Secondary's write, both done before the reply.
    Replicated,
}

#[derive(Debug, Parser)]
#[command(
    name = "floor-pair",
    about = "A minimal protocol C pair behind repd's NBD frontend: the floor repd's cost is measured against",
    long_about = "Serves FILE as the NBD export r0 at --nbd. In replicated mode every write also \
        goes over loopback TCP, with a CRC32C, to a Secondary in the same process that writes \
        --peer-file; the reply waits for both writes. No metadata, no recovery: a measuring \
        instrument for nbd-bench --floor, not a device to keep data on. Runs until killed.",
    after_help = "Example: floor-pair --mode replicated --nbd 127.0.0.1:10820 --file /var/tmp/a.img --peer-file /dev/shm/b.img"
)]
struct Cli {
    #[arg(long, value_enum)]
    mode: Mode,
    /// NBD listen address
    #[arg(long, value_name = "ADDR:PORT")]
    nbd: SocketAddr,
    /// The Primary's image (its size is the export's size)
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// The Secondary's image (replicated mode), at least as large as FILE
    #[arg(long, value_name = "FILE")]
    peer_file: Option<PathBuf>,
    /// Writer threads per node (each does one blocking pwrite at a time)
    #[arg(long, default_value_t = 8)]
    writers: usize,
}

/// Frame header on the floor's replication link: id, offset, length,
/// CRC32C of the data. A length of 0 is a flush.
const HDR: usize = 24;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(nix::libc::EIO)
}

fn open_direct(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of threads running jobs in arrival order.
fn pool(name: &str, n: usize) -> io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n.max(1) {
        let rx = Arc::clone(&rx);
        thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || loop {
                let job = lock(&rx).recv();
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            })?;
    }
    Ok(tx)
}

/// One request waiting for its local and peer halves.
struct Pending {
    left: AtomicUsize,
    error: AtomicU64,
    reply: Mutex<Option<Reply>>,
}

impl Pending {
    fn new(parts: usize, reply: Reply) -> Arc<Pending> {
        Arc::new(Pending {
            left: AtomicUsize::new(parts),
            error: AtomicU64::new(0),
            reply: Mutex::new(Some(reply)),
        })
    }

    fn done(&self, res: Result<(), i32>) {
        if let Err(e) = res {
            self.error
                .store(u64::from(e.unsigned_abs()), Ordering::Relaxed);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let e = self.error.load(Ordering::Relaxed);
            if let Some(reply) = lock(&self.reply).take() {
                reply(if e == 0 {
                    Ok(None)
                } else {
                    Err(i32::try_from(e).unwrap_or(nix::libc::EIO))
                });
            }
        }
    }
}

/// The Primary's link to the Secondary: a sender thread and an ack reader.
struct Link {
    tx: mpsc::Sender<(u64, u64, Bytes, Arc<Pending>)>,
}

impl Link {
    fn start(stream: TcpStream) -> io::Result<Link> {
        let waiting: Arc<Mutex<HashMap<u64, Arc<Pending>>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<(u64, u64, Bytes, Arc<Pending>)>();
        let mut out = stream.try_clone()?;
        let w = Arc::clone(&waiting);
        thread::Builder::new()
            .name("floor-send".into())
            .spawn(move || {
                for (id, offset, data, p) in rx {
                    lock(&w).insert(id, p);
                    let mut hdr = [0u8; HDR];
                    hdr[..8].copy_from_slice(&id.to_le_bytes());
                    hdr[8..16].copy_from_slice(&offset.to_le_bytes());
                    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    hdr[16..20].copy_from_slice(&len.to_le_bytes());
                    hdr[20..24].copy_from_slice(&crc32c::crc32c(&data).to_le_bytes());
                    if out
                        .write_all(&hdr)
                        .and_then(|()| out.write_all(&data))
                        .is_err()
                    {
                        eprintln!("floor-pair: the link to the Secondary failed");
                        std::process::exit(1);
                    }
                }
            })?;
        let mut inp = io::BufReader::new(stream);
        thread::Builder::new()
            .name("floor-acks".into())
            .spawn(move || loop {
                let mut id = [0u8; 8];
                if inp.read_exact(&mut id).is_err() {
                    eprintln!("floor-pair: the Secondary closed the link");
                    std::process::exit(1);
                }
                if let Some(p) = lock(&waiting).remove(&u64::from_le_bytes(id)) {
                    p.done(Ok(()));
                }
            })?;
        Ok(Link { tx })
    }
}

struct Primary {
    file: Arc<File>,
    size: u64,
    writers: Mutex<mpsc::Sender<Job>>,
    link: Option<Mutex<Link>>,
    next_id: AtomicU64,
}

impl BlockBackend for Primary {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn writable(&self) -> bool {
        true
    }

    fn submit(&self, req: IoRequest, reply: Reply) {
        let file = Arc::clone(&self.file);
        match req {
            IoRequest::Write { offset, data, fua } => {
                let parts = if self.link.is_some() { 2 } else { 1 };
                let p = Pending::new(parts, reply);
                if let Some(link) = &self.link {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let _ = lock(link)
                        .tx
                        .send((id, offset, data.clone(), Arc::clone(&p)));
                }
                let job: Job = Box::new(move || {
                    let r = file.write_all_at(&data, offset).and_then(|()| {
                        if fua {
                            file.sync_data()
                        } else {
                            Ok(())
                        }
                    });
                    p.done(r.map_err(|e| errno(&e)));
                });
                let _ = lock(&self.writers).send(job);
            }
            IoRequest::Read { offset, len } => {
                let job: Job = Box::new(move || {
                    let n = usize::try_from(len).unwrap_or(0);
                    let r = AlignedBuf::for_overwrite(n)
                        .map_err(|_| nix::libc::EINVAL)
                        .and_then(|mut b| {
                            file.read_exact_at(b.as_mut_slice(), offset)
                                .map_err(|e| errno(&e))?;
                            Ok(Some(b.into_bytes()))
                        });
                    reply(r);
                });
                let _ = lock(&self.writers).send(job);
            }
            // The floor measures writes; a flush syncs the local file only
            // (fio --direct=1 sends none).
            IoRequest::Flush => {
                let job: Job =
                    Box::new(move || reply(file.sync_data().map(|()| None).map_err(|e| errno(&e))));
                let _ = lock(&self.writers).send(job);
            }
            IoRequest::Trim { .. } | IoRequest::WriteZeroes { .. } => {
                reply(Err(nix::libc::EOPNOTSUPP));
            }
        }
    }
}

/// The Secondary: reads frames, checks them, writes them, acks each.
fn secondary(listener: TcpListener, file: File, writers: usize) -> io::Result<()> {
    let (stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let acks = Arc::new(Mutex::new(stream.try_clone()?));
    let file = Arc::new(file);
    let pool = pool("floor-b-write", writers)?;
    let mut inp = stream;
    thread::Builder::new()
        .name("floor-b-recv".into())
        .spawn(move || loop {
            let mut hdr = [0u8; HDR];
            if inp.read_exact(&mut hdr).is_err() {
                return;
            }
            let [i0, i1, i2, i3, i4, i5, i6, i7, o0, o1, o2, o3, o4, o5, o6, o7, l0, l1, l2, l3, c0, c1, c2, c3] =
                hdr;
            let id = u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
            let offset = u64::from_le_bytes([o0, o1, o2, o3, o4, o5, o6, o7]);
            let len = u32::from_le_bytes([l0, l1, l2, l3]);
            let crc = u32::from_le_bytes([c0, c1, c2, c3]);
            let Ok(mut buf) = AlignedBuf::for_overwrite(usize::try_from(len).unwrap_or(0)) else {
                eprintln!("floor-pair: a frame of {len} bytes is not a whole number of sectors");
                std::process::exit(1);
            };
            if inp.read_exact(buf.as_mut_slice()).is_err() {
                return;
            }
            if crc32c::crc32c(buf.as_slice()) != crc {
                eprintln!("floor-pair: frame checksum mismatch");
                std::process::exit(1);
            }
            let (file, acks) = (Arc::clone(&file), Arc::clone(&acks));
            let job: Job = Box::new(move || {
                if file.write_all_at(buf.as_slice(), offset).is_err() {
                    eprintln!("floor-pair: the Secondary's write failed");
                    std::process::exit(1);
                }
                let _ = lock(&acks).write_all(&id.to_le_bytes());
            });
            let _ = pool.send(job);
        })?;
    Ok(())
}

fn run(cli: &Cli) -> io::Result<()> {
    let file = open_direct(&cli.file)?;
    let size = file.metadata()?.len();
    let link = match cli.mode {
        Mode::Standalone => None,
        Mode::Replicated => {
            let path = cli.peer_file.as_ref().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "replicated mode needs --peer-file",
                )
            })?;
            let peer = open_direct(path)?;
            if peer.metadata()?.len() < size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is smaller than {}", path.display(), cli.file.display()),
                ));
            }
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            secondary_thread(listener, peer, cli.writers)?;
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Some(Mutex::new(Link::start(s)?))
        }
    };
    let backend = Arc::new(Primary {
        file: Arc::new(file),
        size,
        writers: Mutex::new(pool("floor-a-write", cli.writers)?),
        link,
        next_id: AtomicU64::new(1),
    });
    let server = NbdServer::bind(cli.nbd, "r0".into(), backend)?.spawn();
    println!(
        "floor-pair: serving {} ({:?}) at {}",
        cli.file.display(),
        cli.mode,
        server.local_addr()
    );
    server.join();
    Ok(())
}

fn secondary_thread(listener: TcpListener, file: File, writers: usize) -> io::Result<()> {
    thread::Builder::new()
        .name("floor-b-accept".into())
        .spawn(move || {
            if let Err(e) = secondary(listener, file, writers) {
                eprintln!("floor-pair: Secondary: {e}");
                std::process::exit(1);
            }
        })?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor-pair: error: {e}");
            ExitCode::FAILURE
        }
    }
}
