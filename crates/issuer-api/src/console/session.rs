//! Who is signed in to the console: sessions held in this instance's memory, each named by
//! a random id in an `HttpOnly`, `SameSite=Strict` cookie and carrying its own CSRF token,
//! which every form sends back.
//!
//! In memory, not in Redis or PostgreSQL: an operator works against one instance (the
//! operations listener is per instance), and a restart signing everyone out is the safe
//! failure. The cookie holds nothing but the id, so it needs no signing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "console-session";
/// The sign-in form's own token (double submit): there is no session yet to hold one.
pub const SIGN_IN_COOKIE: &str = "console-sign-in";
/// A session unused this long is over.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// And any session this old, used or not.
const LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);
/// Most sessions held: past it, the least recently used is signed out, so sign-ins (each
/// needing an admin credential) can never grow the memory without bound.
const SESSIONS_MAX: usize = 1_000;

/// Whether the session cookie is marked `Secure` (sent back over HTTPS only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecureCookie {
    /// Secure, unless the console is reached over plain HTTP from a loopback address.
    Auto,
    /// Always: behind a TLS proxy on the same host, which reaches it over loopback.
    Always,
}

/// A signed-in operator, as a page sees them.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who signed in, for the record of each action ("the admin token", "user 7").
    pub who: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// What the last action did, shown once on the next page.
    pub notice: Option<Notice>,
}

/// What an action did, or why it was refused.
#[derive(Debug, Clone)]
pub struct Notice {
    pub text: String,
    pub refused: bool,
}

struct Held {
    session: Session,
    created: Instant,
    used: Instant,
    /// Its end at the latest: [`LIFETIME`] after sign-in, or the credential's expiry if
    /// sooner (a session never outlives the JWT it was opened with).
    ends: Instant,
}

pub struct Sessions {
    held: Mutex<HashMap<String, Held>>,
    secure: SecureCookie,
}

impl Sessions {
    pub fn new(secure: SecureCookie) -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            secure,
        }
    }

    /// A new session for `who`, whose credential expires at `expires_at` (Unix seconds),
    /// and the cookie naming it.
    pub fn open(&self, req: &HttpRequest, who: String, expires_at: Option<u64>) -> Cookie<'static> {
        let id = random_token();
        let now = Instant::now();
        let left = expires_at.map_or(LIFETIME, |exp| {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Duration::from_secs(exp).saturating_sub(unix).min(LIFETIME)
        });
        let mut held = self.lock();
        held.retain(|_, s| live(s, now));
        if held.len() >= SESSIONS_MAX
            && let Some(oldest) = held
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(id, _)| id.clone())
        {
            held.remove(&oldest);
        }
        held.insert(
            id.clone(),
            Held {
                session: Session {
                    who,
                    csrf: random_token(),
                    notice: None,
                },
                created: now,
                used: now,
                ends: now + left,
            },
        );
        self.cookie(req, SESSION_COOKIE, id)
    }

    /// The request's session, if it names one still live; its notice is taken (shown once).
    pub fn current(&self, req: &HttpRequest) -> Option<Session> {
        let id = req.cookie(SESSION_COOKIE)?;
        let now = Instant::now();
        let mut held = self.lock();
        let entry = held.get_mut(id.value())?;
        if !live(entry, now) {
            held.remove(id.value());
            return None;
        }
        entry.used = now;
        let session = entry.session.clone();
        entry.session.notice = None;
        Some(session)
    }

    /// Whether the request names a live session, leaving it as it is: a page's refresh is no
    /// sign of an operator there (an open tab must not keep a session from going idle), and
    /// must not take the notice meant for the next page.
    pub fn live(&self, req: &HttpRequest) -> bool {
        req.cookie(SESSION_COOKIE).is_some_and(|id| {
            self.lock()
                .get(id.value())
                .is_some_and(|held| live(held, Instant::now()))
        })
    }

    /// Leaves a notice for the session's next page.
    pub fn notify(&self, req: &HttpRequest, text: String, refused: bool) {
        if let Some(id) = req.cookie(SESSION_COOKIE)
            && let Some(entry) = self.lock().get_mut(id.value())
        {
            entry.session.notice = Some(Notice { text, refused });
        }
    }

    /// Ends the request's session; the cookie returned clears it in the browser.
    pub fn close(&self, req: &HttpRequest) -> Cookie<'static> {
        if let Some(id) = req.cookie(SESSION_COOKIE) {
            self.lock().remove(id.value());
        }
        let mut cookie = self.cookie(req, SESSION_COOKIE, String::new());
        cookie.make_removal();
        cookie
    }

    /// The sign-in form's token, and the cookie it must match.
    pub fn sign_in_token(&self, req: &HttpRequest) -> (String, Cookie<'static>) {
        let token = random_token();
        (token.clone(), self.cookie(req, SIGN_IN_COOKIE, token))
    }

    /// A cookie of the console's: never readable by scripts, never sent by another site.
    fn cookie(&self, req: &HttpRequest, name: &'static str, value: String) -> Cookie<'static> {
        // Canonical: a dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1.
        let plain_loopback = req
            .peer_addr()
            .is_some_and(|peer| peer.ip().to_canonical().is_loopback())
            && req.connection_info().scheme() == "http";
        Cookie::build(name, value)
            .path("/console")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.secure == SecureCookie::Always || !plain_loopback)
            .finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        // A poisoned map still holds whole sessions: each is inserted or removed at once.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn live(held: &Held, now: Instant) -> bool {
    now.duration_since(held.used) < IDLE
        && now.duration_since(held.created) < LIFETIME
        && now < held.ends
}

/// Whether `sent` is `expected`, in time that does not depend on where they differ.
pub fn same_token(expected: &str, sent: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(sent.as_bytes()))
}

/// 256 bits from the operating system's CSPRNG, in hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS's generator failing is not something a console can work around.
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..63]), "a prefix is not the token");
        assert!(!same_token("", ""), "no token is never a match");
    }
}
