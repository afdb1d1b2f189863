//! A sync_file: a file descriptor holding one dma_fence. It polls readable once signalled.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// An owned sync_file descriptor.
#[derive(Debug)]
pub struct SyncFile(OwnedFd);

impl SyncFile {
    /// Wraps a descriptor the caller knows to be a sync_file.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// Whether the fence has signalled, without blocking.
    pub fn is_signaled(&self) -> std::io::Result<bool> {
        self.wait(Some(Duration::ZERO))
    }

    /// Waits up to `timeout` (forever with `None`); returns whether the fence signalled.
    pub fn wait(&self, timeout: Option<Duration>) -> std::io::Result<bool> {
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        let timeout = timeout.map(|t| Timespec { tv_sec: t.as_secs().min(i64::MAX as u64) as i64, tv_nsec: i64::from(t.subsec_nanos()) });
        loop {
            match poll(&mut fds, timeout.as_ref()) {
                Ok(n) => return Ok(n > 0 && fds[0].revents().contains(PollFlags::IN)),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }
}

impl AsFd for SyncFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
