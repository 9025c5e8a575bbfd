//! A timeout whose clock starts only if the work has to wait.
//!
//! `tokio::time::timeout` reads the clock and sets up its timer (a handle to the runtime's
//! time driver) when it is made, before the work is first polled. On the request path most
//! bounded steps finish in their first poll: the head is already in the buffer, the socket
//! takes a small response at once. [`within`] polls the work once first and arms the timer
//! only when it is pending, so those steps cost no clock reading. The bound is the same to
//! within that first poll, which cannot block: the wait starts when the waiting does.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

pub use tokio::time::error::Elapsed;

/// `fut` within `limit` (as `tokio::time::timeout`), the timer armed only if `fut` is not
/// ready at its first poll.
pub async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = pin!(fut);
    if let Poll::Ready(v) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Ok(v);
    }
    tokio::time::timeout(limit, fut).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_work_needs_no_time_and_waiting_work_is_bounded() {
        // Ready at once: done even with no time at all.
        assert_eq!(within(Duration::ZERO, async { 7 }).await.ok(), Some(7));
        // Waits less than the limit: done.
        let start = tokio::time::Instant::now();
        let slow = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            8
        };
        assert_eq!(within(Duration::from_secs(3), slow).await.ok(), Some(8));
        // Waits longer: cut at the limit.
        let start2 = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        assert!(within(Duration::from_secs(5), never).await.is_err());
        assert_eq!(start2 - start, Duration::from_secs(2));
        assert_eq!(tokio::time::Instant::now() - start2, Duration::from_secs(5));
    }
}
