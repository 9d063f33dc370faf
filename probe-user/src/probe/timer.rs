//! A timer that wakes the probe loop to within tens of microseconds: tokio's sleeps round up to
//! whole milliseconds, which at 10 ms windows adds several milliseconds to the detection of a
//! dead host (a round's send and two checks lie on its path). A `timerfd` on CLOCK_MONOTONIC,
//! the clock tokio's `Instant` reads, registered with the runtime.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
};

use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::Instant,
};

/// The timerfd, as tokio needs it (`AsRawFd`).
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Timer {
    fd: AsyncFd<Fd>,
}

impl Timer {
    /// Must be called inside a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Self> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: the TimerFd owns its fd and keeps it open, unchanged, until it is dropped
        // together with this AsyncFd; nothing else closes or replaces it.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE)? };
        Ok(Self { fd })
    }

    /// Waits until `at` (at once if it has passed).
    pub async fn sleep_until(&mut self, at: Instant) -> io::Result<()> {
        let now = Instant::now();
        if at <= now {
            return Ok(());
        }
        let spec = TimeSpec::from_duration(at - now);
        self.fd
            .get_ref()
            .0
            .set(Expiration::OneShot(spec), TimerSetTimeFlags::empty())?;
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_within_a_fraction_of_a_millisecond() {
        let mut timer = Timer::new().unwrap();
        let mut late = Vec::new();
        for _ in 0..3 {
            for step in [300u64, 700, 1_100, 2_300, 50] {
                let at = Instant::now() + Duration::from_micros(step);
                timer.sleep_until(at).await.unwrap();
                late.push(Instant::now() - at);
            }
        }
        late.sort();
        // tokio's own sleep would be up to a whole millisecond late every time. The median,
        // not the worst, so that a busy machine (other tests, a compiler) preempting us once
        // or twice does not fail the test; the mechanism shows in the typical wake-up.
        let median = late[late.len() / 2];
        assert!(
            median < Duration::from_micros(500),
            "woke {median:?} late (median of {late:?})"
        );
        // A time in the past: at once.
        timer
            .sleep_until(Instant::now() - Duration::from_millis(5))
            .await
            .unwrap();
    }
}
