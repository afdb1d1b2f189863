//! A sequence of linux-dmabuf params requests with fds of every kind, and the check that the
//! compositor's answer is one the protocol allows. Driven by proptest (tests/import/fuzz.rs)
//! and by the cargo-fuzz target (fuzz/).

use std::os::fd::{AsFd, OwnedFd};

use crate::harness::*;

#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum FdKind {
    Memfd(u64),
    File(u64),
    Pipe,
    Socket,
    DevNull,
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
    }
}

/// Sends one sequence on a fresh client and checks the outcome is one the protocol allows.
pub fn run_sequence(server: &mut Server, ops: &[Op]) -> Result<(), String> {
    let mut client = server.connect(4);
    let mut params = vec![client.params(0)];
    for (i, op) in ops.iter().enumerate() {
        let Some(current) = params.last() else { break };
        match op {
            Op::Add { fd, idx, offset, stride, modifier } => {
                let fd = make_fd(fd);
                add(current, fd.as_fd(), *idx, *offset, *stride, *modifier);
            }
            Op::Create { width, height, format, flags } => current.create(*width, *height, *format, Flags::from_bits_retain(*flags)),
            Op::CreateImmed { width, height, format, flags } => {
                let _ = current.create_immed(*width, *height, *format, Flags::from_bits_retain(*flags), &client.qh, ());
            }
            Op::NewParams => params.push(client.params(i as u32 + 1)),
            Op::Destroy => {
                if let Some(p) = params.pop() {
                    p.destroy();
                }
            }
        }
    }
    server.roundtrip(&mut client);
    if let Some(err) = client.error() {
        let allowed = err.interface == "zwp_linux_buffer_params_v1" && err.code <= 7;
        if !allowed {
            return Err(format!("unexpected protocol error {err:?}"));
        }
    }
    // No fd on the host is a dma-buf: nothing may ever be accepted or created.
    if !server.state.accepted.is_empty() || !client.state.created.is_empty() {
        return Err("a non-dma-buf was accepted".into());
    }
    Ok(())
}
