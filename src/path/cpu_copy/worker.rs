//! The copy thread: map the client's dma-buf, bracket the reads with `DMA_BUF_IOCTL_SYNC`
//! (START|READ … END|READ), and copy the damaged rows straight into the surface's shadow. The
//! same thread runs the cache maintenance of DirectWithMaintenance buffers
//! ([`crate::path::maintenance`]), which is the same bracket without the reads. Jobs arrive over
//! a channel and go back over another, so a slow (uncached, write-combined) read never holds up
//! the event loop, except a frame that draws that very surface meanwhile, which waits for the
//! shadow's lock. One thread, first in first out: a surface's copies run in the order they were
//! handed over.

use std::sync::mpsc;
use std::thread::JoinHandle;

use smithay::backend::allocator::dmabuf::{Dmabuf, DmabufSyncFlags};
use smithay::backend::allocator::Buffer as _;
use smithay::reexports::calloop::channel;
use smithay::utils::{Buffer as BufferCoords, Rectangle};

use super::rows::{copy_rects, Plane, Reads};
use super::shadow::ShadowBuffer;
use super::CopyError;

/// One commit's copy: which rectangles of which buffer, into which shadow.
#[derive(Debug)]
pub struct CopyJob {
    /// The commit wait this job belongs to (see `crate::commit`).
    pub id: u64,
    /// Its place in the surface's order of copies.
    pub seq: u64,
    /// The buffer to read.
    pub dmabuf: Dmabuf,
    /// The rectangles to copy.
    pub rects: Vec<Rectangle<i32, BufferCoords>>,
    /// Bytes per pixel.
    pub cpp: usize,
    /// How to read the buffer's memory.
    pub reads: Reads,
    /// The shadow to write.
    pub target: ShadowBuffer,
}

/// What came back for job `id`.
#[derive(Debug)]
pub struct CopyDone {
    /// The wait the copy belongs to.
    pub id: u64,
    /// The copy's place in its surface's order.
    pub seq: u64,
    /// The bytes copied, or why nothing was.
    pub result: Result<u64, CopyError>,
    /// How long the copy thread spent on it.
    pub took: std::time::Duration,
}

/// Work for the thread.
#[derive(Debug)]
pub enum Job {
    /// A CPU copy.
    Copy(CopyJob),
    /// Cache maintenance before scanout.
    Maintain(crate::path::maintenance::MaintainJob),
}

/// What the thread did.
#[derive(Debug)]
pub enum Done {
    /// A copy came back.
    Copy(CopyDone),
    /// Maintenance is done.
    Maintained(crate::path::maintenance::MaintainDone),
}

impl Job {
    /// The commit wait the job belongs to.
    pub fn id(&self) -> u64 {
        match self {
            Job::Copy(j) => j.id,
            Job::Maintain(j) => j.id,
        }
    }
}

/// The copy thread. Dropping it closes the job channel and joins the thread.
#[derive(Debug)]
pub struct CopyWorker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl CopyWorker {
    /// Starts the thread; results go to `done` (a calloop channel the event loop watches).
    pub fn spawn(done: channel::Sender<Done>) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name("cohere-cpu-copy".into()).spawn(move || {
            let mut mappings = Mappings::default();
            for job in rx {
                let result = match job {
                    Job::Copy(mut job) => {
                        let start = std::time::Instant::now();
                        let result = copy(&mut job, &mut mappings);
                        Done::Copy(CopyDone { id: job.id, seq: job.seq, result, took: start.elapsed() })
                    }
                    Job::Maintain(job) => Done::Maintained(crate::path::maintenance::run(job)),
                };
                if done.send(result).is_err() {
                    break;
                }
            }
        })?;
        Ok(Self { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Queues `job`; gives it back if the thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for CopyWorker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A read-only mapping of a client buffer, unmapped when dropped.
#[derive(Debug)]
struct Mapping {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl Mapping {
    fn new(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> Result<Self, CopyError> {
        // SAFETY: a fresh shared read-only mapping of `len` bytes, which the caller checked
        // the fd's size covers. It is only read, through `bytes`, and unmapped on drop.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, rustix::mm::ProtFlags::READ, rustix::mm::MapFlags::SHARED, fd, 0) }
            .map_err(CopyError::Map)?;
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no slice of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

/// The copy thread's mappings of the buffers it copied last. A client draws into a few
/// buffers in turn, so keeping their mappings saves an mmap, a munmap and a page fault per
/// page read on every copy. A mapping goes when its buffer's last `Dmabuf` does (looked at on
/// each copy), or when it is the least recently used of more than [`Mappings::KEPT`].
#[derive(Debug, Default)]
struct Mappings(Vec<(smithay::backend::allocator::dmabuf::WeakDmabuf, Mapping)>);

impl Mappings {
    const KEPT: usize = 8;

    /// `dmabuf`'s mapping of `len` bytes, made if there is none, moved to most recently used.
    fn get(&mut self, dmabuf: &Dmabuf, fd: std::os::fd::BorrowedFd<'_>, len: usize) -> Result<&Mapping, CopyError> {
        self.0.retain(|(weak, _)| weak.upgrade().is_some());
        let weak = dmabuf.weak();
        let entry = match self.0.iter().position(|(w, m)| *w == weak && m.len == len) {
            Some(at) => self.0.remove(at),
            None => (weak, Mapping::new(fd, len)?),
        };
        if self.0.len() >= Self::KEPT {
            self.0.remove(0);
        }
        self.0.push(entry);
        Ok(&self.0[self.0.len() - 1].1)
    }
}

/// Runs `job`: maps plane 0 from offset 0 (an unaligned plane offset can't be mmapped; the
/// mapping is kept for the buffer's next copy), brackets the reads with SYNC, and copies the
/// job's rectangles into its shadow. Returns the bytes copied.
fn copy(job: &mut CopyJob, mappings: &mut Mappings) -> Result<u64, CopyError> {
    let dmabuf = &job.dmabuf;
    let (Some(fd), Some(offset), Some(stride)) = (dmabuf.handles().next(), dmabuf.offsets().next(), dmabuf.strides().next()) else {
        return Err(CopyError::Format(dmabuf.format().code));
    };
    let (offset, stride) = (offset as usize, stride as usize);
    let need = offset as u64 + stride as u64 * u64::from(dmabuf.height());
    let have = rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0)).map_err(CopyError::Map)?;
    let _ = rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(0));
    if need > have {
        return Err(CopyError::Size { need, have });
    }
    // The commit waited for the buffer's acquire fence. SYNC(START) would wait for a write
    // fence added since (a client writing a buffer it handed over): refuse instead.
    if crate::sync::is_being_written(dmabuf) {
        return Err(CopyError::Fenced);
    }
    let len = need as usize;
    let src = mappings.get(dmabuf, fd, len)?.bytes();
    dmabuf.sync_plane(0, DmabufSyncFlags::START | DmabufSyncFlags::READ).map_err(|e| CopyError::Sync(e.to_string()))?;
    let mut copied = 0;
    let target_stride = job.target.stride();
    // The shadow's lock goes (and its damage is recorded) before the bracket closes.
    job.target.write(|dst| {
        let mut dst = Plane { bytes: dst, offset: 0, stride: target_stride };
        copied = copy_rects(&Plane { bytes: src, offset, stride }, &mut dst, &job.rects, job.cpp, job.reads);
        job.rects.clone()
    });
    dmabuf.sync_plane(0, DmabufSyncFlags::END | DmabufSyncFlags::READ).map_err(|e| CopyError::Sync(e.to_string()))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smithay::backend::allocator::dmabuf::DmabufFlags;
    use smithay::backend::allocator::{Fourcc, Modifier};

    /// A one-plane buffer over a memfd of `len` bytes filled with `byte` (mmap works on any
    /// fd; only the copy needs a real dma-buf).
    fn buffer(len: usize, byte: u8) -> Dmabuf {
        let fd = rustix::fs::memfd_create("mapping", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&fd, &vec![byte; len]).unwrap();
        let mut builder = Dmabuf::builder((16, (len / 64) as i32), Fourcc::Xrgb8888, Modifier::Linear, DmabufFlags::empty());
        builder.add_plane(fd, 0, 0, 64);
        builder.build().unwrap()
    }

    #[test]
    fn mappings_are_kept_per_buffer_and_go_with_it() {
        let mut mappings = Mappings::default();
        let a = buffer(4096, 1);
        let fd = a.handles().next().unwrap();
        let first = mappings.get(&a, fd, 4096).unwrap().ptr;
        assert_eq!(mappings.get(&a, fd, 4096).unwrap().ptr, first, "the second copy reuses the mapping");
        assert_eq!(mappings.get(&a, fd, 4096).unwrap().bytes()[4095], 1);

        let b = buffer(4096, 2);
        assert_eq!(mappings.get(&b, b.handles().next().unwrap(), 4096).unwrap().bytes()[0], 2);
        assert_eq!(mappings.0.len(), 2);
        drop(a);
        let c = buffer(4096, 3);
        mappings.get(&c, c.handles().next().unwrap(), 4096).unwrap();
        assert_eq!(mappings.0.len(), 2, "a's mapping went with its last Dmabuf");

        let many: Vec<Dmabuf> = (0..Mappings::KEPT + 2).map(|i| buffer(4096, i as u8)).collect();
        for d in &many {
            mappings.get(d, d.handles().next().unwrap(), 4096).unwrap();
        }
        assert_eq!(mappings.0.len(), Mappings::KEPT, "no more than KEPT mappings");
    }
}
