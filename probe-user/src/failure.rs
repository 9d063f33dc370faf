//! Why xdprobe stopped, which decides its exit code.

/// A failure, by whose fault.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags, config, names or targets: exit 2.
    Usage(anyhow::Error),
    /// The system would not do what we asked: exit 3.
    System(anyhow::Error),
}

pub trait OrSystem<T> {
    /// Any error here is the system's.
    fn system(self) -> Result<T, Failure>;
}

impl<T> OrSystem<T> for anyhow::Result<T> {
    fn system(self) -> Result<T, Failure> {
        self.map_err(Failure::System)
    }
}
