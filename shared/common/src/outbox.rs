//! The outbox pattern's two halves that the services share: numbering an
//! event from a one-row counter in the transaction that writes it, and
//! streaming a tenant's events after a cursor by polling (and, where the
//! process wrote them, at once).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sea_orm::{ConnectionTrait, DbErr, Statement};
use tokio::sync::{Notify, watch};
use tonic::Status;

/// The next number of the counter row (`id = 1`, `last_sequence`) of
/// `table`, taken on the caller's transaction. The row stays locked until it
/// commits, so events become visible in the order of their numbers.
pub async fn next_sequence(connection: &impl ConnectionTrait, table: &str) -> Result<i64, DbErr> {
    let backend = connection.get_database_backend();
    let sql = format!("UPDATE {table} SET last_sequence = last_sequence + 1 WHERE id = 1 RETURNING last_sequence");
    let row = connection
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| DbErr::Custom(format!("the counter row of {table} is missing")))?;
    row.try_get("", "last_sequence")
}

/// How an event stream ends when its server stops: UNAVAILABLE, reason
/// SHUTTING_DOWN, so a consumer tells a drain from an end and resumes on
/// another replica after the last sequence it received.
pub fn shutting_down() -> Status {
    // At once: another replica takes the stream.
    crate::status::retry_later(
        tonic::Code::Unavailable,
        "SHUTTING_DOWN",
        "the server is shutting down; resume after the last sequence received",
        std::time::Duration::ZERO,
    )
}

/// The events after `after`, then each new one as `read` finds it, asking
/// again every `poll` while there are none, until `stopping` turns true
/// (then it ends with [`shutting_down`]). An error ends the stream after it
/// is sent.
pub fn follow<E, F, Fut>(
    after: u64,
    stopping: watch::Receiver<bool>,
    poll: Duration,
    read: F,
) -> impl Stream<Item = Result<E, Status>> + Send
where
    E: Send + 'static,
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<(u64, E)>, Status>> + Send,
{
    follow_woken(after, stopping, poll, None, read)
}

/// As [`follow`], and asking again at once when `written` is notified (this
/// process committed events), not only every `poll` (events other replicas
/// wrote).
pub fn follow_woken<E, F, Fut>(
    after: u64,
    stopping: watch::Receiver<bool>,
    poll: Duration,
    written: Option<Arc<Notify>>,
    read: F,
) -> impl Stream<Item = Result<E, Status>> + Send
where
    E: Send + 'static,
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<(u64, E)>, Status>> + Send,
{
    struct State<E, F> {
        cursor: u64,
        buffered: VecDeque<(u64, E)>,
        stopping: watch::Receiver<bool>,
        /// The sender is gone: `stopping` will never change.
        unwatched: bool,
        written: Option<Arc<Notify>>,
        read: F,
        failed: bool,
    }
    let state =
        State { cursor: after, buffered: VecDeque::new(), stopping, unwatched: false, written, read, failed: false };
    futures::stream::unfold(state, move |mut state| async move {
        if state.failed {
            return None;
        }
        loop {
            if let Some((sequence, event)) = state.buffered.pop_front() {
                state.cursor = sequence;
                return Some((Ok(event), state));
            }
            if *state.stopping.borrow() {
                state.failed = true;
                return Some((Err(shutting_down()), state));
            }
            // Registered before the read, so a commit between the read and
            // the wait still wakes the stream.
            let notified = state.written.clone().map(Notify::notified_owned);
            match (state.read)(state.cursor).await {
                Err(status) => {
                    state.failed = true;
                    return Some((Err(status), state));
                }
                Ok(batch) if batch.is_empty() => {
                    let unwatched = state.unwatched;
                    let woken = async {
                        match notified {
                            Some(notified) => notified.await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(poll) => {}
                        () = woken => {}
                        changed = state.stopping.changed(), if !unwatched => state.unwatched = changed.is_err(),
                    }
                }
                Ok(batch) => state.buffered.extend(batch),
            }
        }
    })
}
