//! A sequence of linux-dmabuf params requests, from a client bound at some version, with fds of
//! every kind, and the check that the compositor's answer is one the protocol allows. Driven by
//! proptest (tests/import/fuzz.rs, and in the VM tier with real dma-bufs) and by the cargo-fuzz
//! target (fuzz/).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};

use super::harness::*;

#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum FdKind {
    Memfd(u64),
    File(u64),
    Pipe,
    Socket,
    DevNull,
    /// A real dma-buf of this size (a udmabuf), where /dev/udmabuf exists; a memfd elsewhere.
    Udmabuf(u64),
}

#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Op {
    Add { fd: FdKind, idx: u32, offset: u32, stride: u32, modifier: u64 },
    Create { width: i32, height: i32, format: u32, flags: u32 },
    CreateImmed { width: i32, height: i32, format: u32, flags: u32 },
    NewParams,
    Destroy,
}

/// A client binding linux-dmabuf at `version` (folded into 1..=5) and sending `ops`.
#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct Sequence {
    pub version: u32,
    pub ops: Vec<Op>,
}

/// Sizes are folded below 16 MiB: the fd's size is the compositor's input, not the test
/// machine's memory.
pub fn make_fd(kind: &FdKind) -> OwnedFd {
    const MAX: u64 = 16 << 20;
    match kind {
        FdKind::Memfd(size) => memfd(size % MAX),
        FdKind::File(size) => {
            let f = tempfile::tempfile().expect("tempfile");
            f.set_len(size % MAX).expect("set_len");
            f.into()
        }
        FdKind::Pipe => rustix::pipe::pipe().expect("pipe").0,
        FdKind::Socket => std::os::unix::net::UnixStream::pair().expect("socket").0.into(),
        FdKind::DevNull => std::fs::File::open("/dev/null").expect("/dev/null").into(),
        FdKind::Udmabuf(size) => {
            let size = (size % MAX).max(1) as usize;
            cohere::coherency::probe::udmabuf(size).unwrap_or_else(|_| memfd(size as u64))
        }
    }
}

/// What one sequence led to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub created: usize,
    pub failed: usize,
    /// The protocol error that ended it, if one did.
    pub error: Option<u32>,
}

/// What many sequences led to: proof that a run exercised every kind of answer.
#[derive(Debug, Default)]
pub struct Tally {
    pub sequences: usize,
    pub created: usize,
    pub failed: usize,
    pub error_codes: BTreeSet<u32>,
    pub versions: BTreeSet<u32>,
}

impl Tally {
    pub fn add(&mut self, version: u32, outcome: &Outcome) {
        self.sequences += 1;
        self.created += outcome.created;
        self.failed += outcome.failed;
        self.error_codes.extend(outcome.error);
        self.versions.insert(version);
    }
}

/// Whether `fd` is a dma-buf, by the kernel's name for it (an oracle independent of cohere).
fn is_dmabuf(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).is_ok_and(|l| l.to_string_lossy().contains("dmabuf"))
}

/// Sends one sequence on a fresh client and checks the outcome is one the protocol allows.
pub fn run_sequence(server: &mut Server, seq: &Sequence) -> Result<Outcome, String> {
    let version = seq.version % 5 + 1;
    server.state.accepted.clear();
    let mut client = server.connect(version);
    check_bind_events(&client, version)?;
    let mut params = vec![client.params(0)];
    for (i, op) in seq.ops.iter().enumerate() {
        let Some(current) = params.last() else { break };
        match op {
            Op::Add { fd, idx, offset, stride, modifier } => {
                let fd = make_fd(fd);
                add(current, fd.as_fd(), *idx, *offset, *stride, *modifier);
            }
            Op::Create { width, height, format, flags } => current.create(*width, *height, *format, Flags::from_bits_retain(*flags)),
            // create_immed exists from version 2 on: a v1 client can't send it.
            Op::CreateImmed { width, height, format, flags } if version >= 2 => {
                let _ = current.create_immed(*width, *height, *format, Flags::from_bits_retain(*flags), &client.qh, ());
            }
            Op::CreateImmed { .. } => {}
            Op::NewParams => params.push(client.params(i as u32 + 1)),
            Op::Destroy => {
                if let Some(p) = params.pop() {
                    p.destroy();
                }
            }
        }
    }
    server.roundtrip(&mut client);
    let error = client.error();
    if let Some(err) = &error {
        let allowed = err.interface == "zwp_linux_buffer_params_v1" && err.code <= 7;
        if !allowed {
            return Err(format!("unexpected protocol error {err:?}"));
        }
    }
    // Only real dma-bufs may ever be accepted, and only with every plane one.
    for dmabuf in &server.state.accepted {
        if !dmabuf.handles().all(is_dmabuf) {
            return Err(format!("a buffer with a plane that isn't a dma-buf was accepted: {dmabuf:?}"));
        }
    }
    // Every buffer the client saw created went through the import hook.
    let created = client.state.created.len();
    if created > server.state.accepted.len() {
        return Err(format!("{created} created but {} accepted", server.state.accepted.len()));
    }
    // `create_immed` successes create no event; count what the hook accepted.
    Ok(Outcome { created: server.state.accepted.len(), failed: client.state.failed.len(), error: error.map(|e| e.code) })
}

/// The bind's events are exactly the bound version's (see cohere's `import::dispatch`).
fn check_bind_events(client: &Client, version: u32) -> Result<(), String> {
    let s = &client.state;
    let ok = match version {
        1 | 2 => !s.formats.is_empty() && s.modifiers.is_empty(),
        3 => !s.formats.is_empty() && !s.modifiers.is_empty(),
        _ => s.formats.is_empty() && s.modifiers.is_empty(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("v{version} bind got {:?}", s.transcript))
    }
}
