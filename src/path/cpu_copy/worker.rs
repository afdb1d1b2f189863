//! The read side of the CPU copy, on its own thread: map the client's dma-buf, bracket the
//! reads with `DMA_BUF_IOCTL_SYNC` (START|READ … END|READ), and gather the damaged rows into an
//! owned buffer. The same thread runs the cache maintenance of DirectWithMaintenance buffers
//! ([`crate::path::maintenance`]), which is the same bracket without the reads. Jobs arrive over
//! a channel and go back over another; the worker shares no memory and takes no locks, so a
//! slow (uncached, write-combined) read never holds up the event loop. One thread, first in
//! first out.

use std::sync::mpsc;
use std::thread::JoinHandle;

use smithay::backend::allocator::dmabuf::{Dmabuf, DmabufSyncFlags};
use smithay::backend::allocator::Buffer as _;
use smithay::reexports::calloop::channel;
use smithay::utils::{Buffer as BufferCoords, Rectangle};

use super::{gather, CopyError, Plane};

/// One commit's copy: which rectangles of which buffer.
#[derive(Debug)]
pub struct CopyJob {
    /// The commit wait this job belongs to (see `crate::commit`).
    pub id: u64,
    /// The buffer to read.
    pub dmabuf: Dmabuf,
    /// The rectangles to read.
    pub rects: Vec<Rectangle<i32, BufferCoords>>,
    /// Bytes per pixel.
    pub cpp: usize,
}

/// The damaged rows of a job, rectangle after rectangle, each `w × cpp` bytes per row.
#[derive(Debug)]
pub struct Readout {
    /// The rectangles read.
    pub rects: Vec<Rectangle<i32, BufferCoords>>,
    /// Their rows, one after another.
    pub data: Vec<u8>,
}

/// What came back for job `id`.
#[derive(Debug)]
pub struct CopyDone {
    /// The wait the copy belongs to.
    pub id: u64,
    /// What was read, or why not.
    pub result: Result<Readout, CopyError>,
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
            for job in rx {
                let result = match job {
                    Job::Copy(job) => {
                        let result = read(&job.dmabuf, &job.rects, job.cpp).map(|data| Readout { rects: job.rects, data });
                        Done::Copy(CopyDone { id: job.id, result })
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

/// Maps plane 0 from offset 0 (an unaligned plane offset can't be mmapped), brackets the reads
/// with SYNC, and gathers `rects`.
pub fn read(dmabuf: &Dmabuf, rects: &[Rectangle<i32, BufferCoords>], cpp: usize) -> Result<Vec<u8>, CopyError> {
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
    // SAFETY: a fresh shared read-only mapping of `len` bytes, which the fd's size covers; it
    // is only read through the slice below and unmapped before returning.
    let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, rustix::mm::ProtFlags::READ, rustix::mm::MapFlags::SHARED, fd, 0) }
        .map_err(CopyError::Map)?;
    // SAFETY: the mapping above is `len` readable bytes and lives until munmap below.
    let src = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    let result = (|| {
        dmabuf.sync_plane(0, DmabufSyncFlags::START | DmabufSyncFlags::READ).map_err(|e| CopyError::Sync(e.to_string()))?;
        let data = gather(&Plane { bytes: src, offset, stride }, rects, cpp);
        dmabuf.sync_plane(0, DmabufSyncFlags::END | DmabufSyncFlags::READ).map_err(|e| CopyError::Sync(e.to_string()))?;
        Ok(data)
    })();
    // SAFETY: unmaps exactly the mapping made above; `src` is not used after this.
    let _ = unsafe { rustix::mm::munmap(ptr, len) };
    result
}
