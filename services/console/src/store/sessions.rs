//! Sessions, in this process's memory. A session holds the API key its
//! person signed in with (the console calls the services with it), so it
//! never leaves the server: the cookie carries a random token, and the map is
//! keyed by that token's digest. Sessions end after a spell without use, at
//! sign-out, and when this process stops; their number is bounded, so
//! unauthenticated traffic cannot grow memory (a full table drops the
//! session seen least recently).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::Role;

/// One signed-in person.
#[derive(Clone)]
pub struct Session {
    /// The key calls are made with.
    pub key: String,
    pub tenant_id: String,
    pub role: Role,
    /// The token every form of this session carries.
    pub csrf: String,
    last_seen: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("tenant_id", &self.tenant_id).field("role", &self.role).finish_non_exhaustive()
    }
}

impl Session {
    /// Whether `token` is this session's CSRF token (compared by digest, so
    /// the time taken says nothing about how much of it matched).
    pub fn is_csrf(&self, token: &str) -> bool {
        Sha256::digest(token.as_bytes()) == Sha256::digest(self.csrf.as_bytes())
    }
}

pub struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    limit: usize,
}

fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    pub fn new(idle: Duration, limit: usize) -> Self {
        Self { by_digest: Mutex::new(HashMap::new()), idle, limit: limit.max(1) }
    }

    /// Opens a session and returns the token its cookie carries.
    pub fn open(&self, key: String, tenant_id: String, role: Role) -> (String, Session) {
        let token = random_token();
        let session = Session { key, tenant_id, role, csrf: random_token(), last_seen: Instant::now() };
        let mut sessions = self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sessions.len() >= self.limit {
            let idle = self.idle;
            sessions.retain(|_, session| session.last_seen.elapsed() < idle);
        }
        if sessions.len() >= self.limit
            && let Some(oldest) =
                sessions.iter().min_by_key(|(_, session)| session.last_seen).map(|(digest, _)| *digest)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(digest(&token), session.clone());
        (token, session)
    }

    /// The live session of a cookie's token, marked as used now.
    pub fn find(&self, token: &str) -> Option<Session> {
        let mut sessions = self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = digest(token);
        let session = sessions.get_mut(&key)?;
        if session.last_seen.elapsed() >= self.idle {
            sessions.remove(&key);
            return None;
        }
        session.last_seen = Instant::now();
        Some(session.clone())
    }

    /// Ends a session (sign-out).
    pub fn close(&self, token: &str) {
        self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&digest(token));
    }

    pub fn len(&self) -> usize {
        self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_token_only_until_it_is_closed() {
        let sessions = Sessions::new(Duration::from_secs(60), 10);
        let (token, session) = sessions.open("key".into(), "tenant".into(), Role::Write);
        assert_eq!(sessions.find(&token).map(|found| found.csrf), Some(session.csrf.clone()));
        assert!(sessions.find(&session.csrf).is_none(), "the CSRF token opens nothing");
        assert!(session.is_csrf(&session.csrf) && !session.is_csrf(&token));
        sessions.close(&token);
        assert!(sessions.find(&token).is_none());
    }

    #[test]
    fn idle_sessions_end_and_the_table_stays_bounded() {
        let sessions = Sessions::new(Duration::ZERO, 10);
        let (token, _) = sessions.open("key".into(), "tenant".into(), Role::Admin);
        assert!(sessions.find(&token).is_none(), "idle past the limit");

        let sessions = Sessions::new(Duration::from_secs(60), 3);
        let tokens: Vec<String> =
            (0..5).map(|_| sessions.open("key".into(), "tenant".into(), Role::ReadOnly).0).collect();
        assert_eq!(sessions.len(), 3);
        assert!(sessions.find(&tokens[0]).is_none(), "the least recently seen made room");
        assert!(sessions.find(&tokens[4]).is_some());
    }
}
