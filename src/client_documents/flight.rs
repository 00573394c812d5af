//! Single flight: at most one fetch per document URL at a time, and at most `max_concurrent_fetches` in all.
//!
//! Invariants:
//! - An entry exists only while the request that leads its fetch is alive: the [`Lead`] guard removes it when the
//!   fetch ends *or when the request is cancelled* (the client went away and hyper dropped its future), so the map
//!   never holds more entries than fetches running, whatever the number of requests.
//! - Every waiter is woken: with the fetch's outcome, or with [`Waited::Abandoned`] when the leader was dropped
//!   before finishing (the waiter may then lead a fetch itself). Nobody waits on a fetch that no longer runs.
//! - No lock is held across an `.await`: the map's shard lock is taken only to look up or insert an entry.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::DocumentError;
use crate::store::Client;

/// What a fetch produced: a document's client, or (for `jwks_uri`) a key set.
pub type Outcome<T = Arc<Client>> = Result<T, DocumentError>;

#[derive(Debug, Clone)]
enum State<T> {
    Running,
    Done(Outcome<T>),
    Abandoned,
}

/// The fetches running, by URL.
pub struct Flights<T = Arc<Client>> {
    running: DashMap<String, Arc<watch::Sender<State<T>>>>,
    slots: Arc<Semaphore>,
}

/// The caller's part in a fetch.
pub enum Joined<'a, T = Arc<Client>> {
    /// Nobody was fetching this URL: the caller fetches it and reports through [`Lead::finish`].
    Lead(Lead<'a, T>),
    /// Another request is fetching it: wait with [`Waiter::outcome`].
    Wait(Waiter<T>),
}

/// How a wait ended.
#[derive(Debug)]
pub enum Waited<T = Arc<Client>> {
    Done(Outcome<T>),
    /// The leading request was cancelled before its fetch finished.
    Abandoned,
}

impl<T: Clone> Flights<T> {
    pub fn new(max_concurrent: usize) -> Self {
        Self { running: DashMap::new(), slots: Arc::new(Semaphore::new(max_concurrent)) }
    }

    /// Joins the fetch of `url`, or starts one when a slot is free ([`DocumentError::Busy`] otherwise).
    pub fn join(&self, url: &str) -> Result<Joined<'_, T>, DocumentError> {
        match self.running.entry(url.to_owned()) {
            Entry::Occupied(e) => Ok(Joined::Wait(Waiter(e.get().subscribe()))),
            Entry::Vacant(e) => {
                let slot = self.slots.clone().try_acquire_owned().map_err(|_| DocumentError::Busy)?;
                let (tx, _) = watch::channel(State::Running);
                let tx = Arc::new(tx);
                e.insert(tx.clone());
                Ok(Joined::Lead(Lead { flights: self, url: url.to_owned(), tx, _slot: slot }))
            }
        }
    }

    /// Fetches running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting for a fetch another request leads.
    pub fn waiting(&self) -> usize {
        self.running.iter().map(|e| e.value().receiver_count()).sum()
    }
}

/// A request waiting for a fetch another request leads.
pub struct Waiter<T = Arc<Client>>(watch::Receiver<State<T>>);

impl<T: Clone> Waiter<T> {
    /// Waits until the fetch ends or its leader is dropped.
    pub async fn outcome(mut self) -> Waited<T> {
        match self.0.wait_for(|s| !matches!(s, State::Running)).await {
            Ok(state) => match &*state {
                State::Done(outcome) => Waited::Done(outcome.clone()),
                State::Running | State::Abandoned => Waited::Abandoned,
            },
            // The sender is gone without a word: only possible if the leader was dropped, which sends `Abandoned`.
            Err(_) => Waited::Abandoned,
        }
    }
}

/// The leading request's hold on a fetch: its map entry and its slot, both released on drop.
pub struct Lead<'a, T = Arc<Client>> {
    flights: &'a Flights<T>,
    url: String,
    tx: Arc<watch::Sender<State<T>>>,
    _slot: OwnedSemaphorePermit,
}

impl<T> Lead<'_, T> {
    /// Hands the outcome to the waiters and ends the flight.
    pub fn finish(self, outcome: &Outcome<T>)
    where
        T: Clone,
    {
        self.tx.send_replace(State::Done(outcome.clone()));
    }
}

impl<T> Drop for Lead<'_, T> {
    fn drop(&mut self) {
        // Out of the map first, so that a woken waiter that tries again starts a new flight instead of joining
        // this finished one.
        self.flights.running.remove(&self.url);
        self.tx.send_if_modified(|s| match s {
            State::Running => {
                *s = State::Abandoned;
                true
            }
            State::Done(_) | State::Abandoned => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Arc<Client> {
        Arc::new(Client::public("https://a.example/c.json", vec!["https://a.example/cb".into()], 1))
    }

    #[tokio::test]
    async fn waiters_get_the_leaders_outcome_and_the_entry_goes() {
        let flights: Flights = Flights::new(4);
        let Ok(Joined::Lead(lead)) = flights.join("u") else { panic!("first caller leads") };
        let Ok(Joined::Wait(rx)) = flights.join("u") else { panic!("second caller waits") };
        assert_eq!(flights.waiting(), 1);
        lead.finish(&Ok(client()));
        assert!(matches!(rx.outcome().await, Waited::Done(Ok(_))));
        assert_eq!(flights.running(), 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_frees_its_entry_and_slot_and_wakes_its_waiters() {
        let flights: Flights = Flights::new(1);
        let Ok(Joined::Lead(lead)) = flights.join("u") else { panic!("first caller leads") };
        let Ok(Joined::Wait(rx)) = flights.join("u") else { panic!("second caller waits") };
        assert!(matches!(flights.join("other"), Err(DocumentError::Busy)), "the only slot is taken");
        drop(lead);
        assert!(matches!(rx.outcome().await, Waited::Abandoned));
        assert_eq!(flights.running(), 0);
        assert!(matches!(flights.join("other"), Ok(Joined::Lead(_))), "the slot is free again");
    }
}
