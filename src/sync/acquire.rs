//! Acquire fences. A client may commit a dma-buf that a device is still writing: its implicit
//! write fence hasn't signalled. `DMA_BUF_IOCTL_SYNC` doesn't wait for fences, a CPU copy would
//! read half-drawn pixels, and a plane given such a buffer holds back the whole CRTC. So the
//! commit is held (a smithay commit blocker) until the fence signals, watched by the event loop,
//! never by blocking it: a fence that never signals stalls only its own surface, and the wait
//! goes away with the surface.
//!
//! The fence comes from `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` (kernel ≥ 6.0). Without it, `poll()` on
//! the dma-buf itself reports readable once its write fences signal.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::wayland::compositor::{Blocker, BlockerState};

use super::{export_sync_file, DmabufAccess};

/// What a commit of `dmabuf` has to wait for.
#[derive(Debug)]
pub enum Acquire {
    /// Every writer is done: apply the commit now.
    Ready,
    /// An fd that polls readable when the writers are done (a sync_file, or the dma-buf).
    Wait(OwnedFd),
}

/// Looks at the writers of `dmabuf`'s planes. An fd that can't be examined at all (neither
/// ioctl nor poll) is treated as ready: the import already proved it is a dma-buf.
pub fn acquire(dmabuf: &Dmabuf) -> Acquire {
    for fd in dmabuf.handles() {
        if let Some(wait) = pending(fd) {
            return Acquire::Wait(wait);
        }
    }
    Acquire::Ready
}

/// What a commit with the syncobj acquire point `point` has to wait for: an eventfd that the
/// kernel signals with the point. A point that can't be examined is treated as signalled
/// rather than stalling the surface forever, and said so.
pub fn acquire_point(point: &super::syncobj::SyncPoint) -> Acquire {
    match point.is_signalled() {
        Ok(true) => Acquire::Ready,
        _ => match point.eventfd() {
            Ok(fd) => Acquire::Wait(fd),
            Err(err) => {
                tracing::warn!(%err, "cannot wait on an acquire point; the commit goes ahead");
                Acquire::Ready
            }
        },
    }
}

fn pending(fd: BorrowedFd<'_>) -> Option<OwnedFd> {
    match export_sync_file(fd, DmabufAccess::Read) {
        Ok(fence) => (!fence.is_signaled().unwrap_or(true)).then(|| fence.into_fd()),
        Err(_) => (!writers_done(fd)).then(|| fd.try_clone_to_owned().ok()).flatten(),
    }
}

/// Whether a device is still writing `dmabuf` (an unsignalled write fence). Cheaper than
/// [`acquire`], which makes a sync_file to wait on: for checks on every frame or copy.
pub fn is_being_written(dmabuf: &Dmabuf) -> bool {
    dmabuf.handles().any(|fd| !writers_done(fd))
}

/// `poll()` on a dma-buf reports readable once its write fences have signalled (the same
/// fences EXPORT_SYNC_FILE with READ returns). An fd that can't be polled counts as done.
fn writers_done(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
    rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).map(|n| n > 0).unwrap_or(true)
}

/// Holds a commit until [`FenceBlocker::release`] is called (by the fence's event source).
#[derive(Debug, Clone, Default)]
pub struct FenceBlocker(Arc<AtomicBool>);

impl FenceBlocker {
    /// Lets the commit through.
    pub fn release(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Blocker for FenceBlocker {
    fn state(&self) -> BlockerState {
        if self.0.load(Ordering::Acquire) {
            BlockerState::Released
        } else {
            BlockerState::Pending
        }
    }
}

/// The fd a [`FenceBlocker`] waits on, as a calloop source wants it.
#[derive(Debug)]
pub struct FenceFd(pub OwnedFd);

impl AsFd for FenceFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}
