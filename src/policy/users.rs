//! Users and groups: the users file, password hashing and verification.
//!
//! The file is htpasswd-like, one user a line:
//!
//! ```text
//! # name:hash[:group,group...]
//! alice:$argon2id$v=19$m=19456,t=2,p=1$...$...:staff,admins
//! bob:$2y$12$...
//! ```
//!
//! Hashes are argon2id (`$argon2id$`, written by [`hash_password`]) or bcrypt (`$2y$`, `$2b$`,
//! `$2a$`, as written by `htpasswd -B`). Verifying one costs tens to hundreds of milliseconds
//! of CPU on purpose, so successful verifications are remembered in a small cache
//! ([`super::users::Users::verify_cached`]); see [`VerifiedCache`] for its bounds. Checks run
//! in the fixed hashing pool ([`super::hashpool`]), argon2 in one reused buffer per thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Counter;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::PasswordHasher;
use argon2::{Argon2, Block};
use sha2::{Digest, Sha256};

use super::hashpool::{HashPool, Overloaded};

/// Longest user name (RFC 1929 carries it in one length byte).
pub const MAX_NAME: usize = 255;
/// Argon2 parameters above these are refused when the file is loaded: one verification must
/// not be able to take gigabytes or minutes.
const MAX_ARGON2_M_KIB: u32 = 256 * 1024;
const MAX_ARGON2_T: u32 = 16;
const MAX_ARGON2_P: u32 = 16;
/// bcrypt costs above this take seconds per verification.
const MAX_BCRYPT_COST: u32 = 16;

/// A password or other secret. `Debug` and `Display` print `***`, so it can sit in structs
/// that are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// An authenticated user and the groups the users file gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Clone)]
enum Hash {
    Bcrypt(String),
    Argon2(String),
}

/// What a check of a hash costs: its algorithm and parameters (salt and digest aside).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Shape {
    Bcrypt {
        cost: u32,
    },
    Argon2 {
        params: String,
        version: Option<u32>,
        len: usize,
    },
}

impl Hash {
    fn shape(&self) -> Option<Shape> {
        match self {
            Hash::Bcrypt(h) => {
                let parts: bcrypt::HashParts = h.parse().ok()?;
                Some(Shape::Bcrypt {
                    cost: parts.get_cost(),
                })
            }
            Hash::Argon2(h) => {
                let ph = PasswordHash::new(h).ok()?;
                Some(Shape::Argon2 {
                    params: ph.params.to_string(),
                    version: ph.version,
                    len: ph.hash.map_or(0, |o| o.len()),
                })
            }
        }
    }

    /// Checks `pw` against this hash. The one verifier for known and unknown users alike.
    fn check(&self, pw: &[u8]) -> bool {
        match self {
            Hash::Bcrypt(h) => bcrypt::verify(pw, h).unwrap_or(false),
            Hash::Argon2(h) => verify_argon2(pw, h),
        }
    }
}

/// An argon2 check that computes into this thread's reused buffer (see
/// [`super::hashpool`]) instead of allocating the memory cost for every check.
fn verify_argon2(pw: &[u8], phc: &str) -> bool {
    let Ok(ph) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&ph.salt, &ph.hash) else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&ph) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(ph.algorithm.as_str()) else {
        return false;
    };
    let version = match ph.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let blocks = params.block_count();
    let hasher = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let done = with_argon2_memory(blocks, |memory| {
        hasher
            .hash_password_into_with_memory(pw, salt.as_ref(), &mut out, memory)
            .is_ok()
    });
    // Constant time over the digest: no early exit on the first differing byte.
    done && out.len() == expected.len()
        && out
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

thread_local! {
    /// This thread's argon2 working memory, grown to the largest cost it has checked and kept
    /// for the thread's life: the hashing threads are few and fixed, so this is bounded.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn with_argon2_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    ARGON2_MEMORY.with(|cell| match cell.try_borrow_mut() {
        Ok(mut memory) => {
            if memory.len() < blocks {
                memory.resize(blocks, Block::default());
            }
            f(&mut memory[..blocks])
        }
        // Re-entered (never, in practice): a buffer of its own.
        Err(_) => f(&mut vec![Block::default(); blocks]),
    })
}

#[derive(Clone)]
struct Entry {
    hash: Hash,
    groups: Vec<String>,
}

/// One bad line of a users file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("users file {path}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Lines {
        path: String,
        errors: Vec<LineError>,
    },
}

/// The loaded users file plus its cache of recent successful verifications.
pub struct Users {
    entries: HashMap<String, Entry>,
    cache: Mutex<VerifiedCache>,
    /// Checked for unknown user names so they cost what a known user's wrong password
    /// costs: a hash of the algorithm and cost most of the file's entries use (the first
    /// such entry's on a tie), made once when the file is loaded. `None` for an empty file.
    dummy: Option<Hash>,
}

/// Shows the number of users only: hashes stay out of logs.
impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Users {
    /// Reads and parses a users file, reporting every bad line.
    pub fn load(path: &Path, cache: CacheLimits) -> Result<Users, UsersError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: shown.clone(),
            source,
        })?;
        Users::parse(&text, cache).map_err(|errors| UsersError::Lines {
            path: shown,
            errors,
        })
    }

    pub fn parse(text: &str, cache: CacheLimits) -> Result<Users, Vec<LineError>> {
        let mut entries = HashMap::new();
        let mut errors = Vec::new();
        let mut shapes: Vec<(Shape, usize, Hash)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok((name, entry)) => {
                    if let Some(shape) = entry.hash.shape() {
                        match shapes.iter_mut().find(|(s, _, _)| *s == shape) {
                            Some((_, n, _)) => *n += 1,
                            None => shapes.push((shape, 1, entry.hash.clone())),
                        }
                    }
                    if entries.insert(name.clone(), entry).is_some() {
                        errors.push(LineError {
                            line: i + 1,
                            message: format!("user {name:?} appears twice"),
                        });
                    }
                }
                Err(message) => errors.push(LineError {
                    line: i + 1,
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // max_by_key keeps the last of equals: look from the end for the first.
        let model = shapes.iter().rev().max_by_key(|(_, n, _)| *n);
        Ok(Users {
            entries,
            cache: Mutex::new(VerifiedCache::new(cache)),
            dummy: model.and_then(|(_, _, h)| dummy_like(h)),
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of a known user, without a password (SOCKS4 USERID, when allowed).
    pub fn identity(&self, name: &str) -> Option<Identity> {
        self.entries.get(name).map(|e| Identity {
            name: name.to_string(),
            groups: e.groups.clone(),
        })
    }

    /// Cheap: answers only from the cache of recent successful verifications.
    pub fn verify_cached(&self, name: &str, password: &Secret) -> Option<Identity> {
        self.verify_cached_at(name, password, Instant::now())
    }

    fn verify_cached_at(&self, name: &str, password: &Secret, now: Instant) -> Option<Identity> {
        let key = cache_key(name, password);
        let mut cache = self.cache.lock().ok()?;
        cache.get(&key, now)?;
        self.identity(name)
    }

    /// Full verification: expensive, so the server runs it in the hashing pool through
    /// [`Users::authenticate`]. A success is cached. An unknown user is checked against the
    /// dummy hash, so it costs what a wrong password costs and timing does not tell which
    /// names exist.
    pub fn verify(&self, name: &str, password: &Secret) -> Option<Identity> {
        self.verify_at(name, password, Instant::now())
    }

    fn verify_at(&self, name: &str, password: &Secret, now: Instant) -> Option<Identity> {
        if let Some(id) = self.verify_cached_at(name, password, now) {
            return Some(id);
        }
        self.verify_hash_at(name, password, now)
    }

    /// The hash check alone (the cache is not asked; a success is added to it).
    fn verify_hash_at(&self, name: &str, password: &Secret, now: Instant) -> Option<Identity> {
        let (hash, known) = self.hash_for(name);
        let ok = hash.is_some_and(|h| h.check(password.expose().as_bytes()));
        if !(ok && known) {
            return None;
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(cache_key(name, password), now);
        }
        self.identity(name)
    }

    /// The hash a login as `name` is checked against: the user's own (`true`), or the dummy
    /// for an unknown name (`false`), so both take the same verifier at the same cost.
    fn hash_for(&self, name: &str) -> (Option<&Hash>, bool) {
        match self.entries.get(name) {
            Some(e) => (Some(&e.hash), true),
            None => (self.dummy.as_ref(), false),
        }
    }

    /// The async face of [`Users::verify`]: the cache first, then the hash check in the
    /// hashing pool (`checks` counts those). `Err(Overloaded)` when the pool's queue is full:
    /// nothing was checked.
    pub async fn authenticate(
        self: &Arc<Self>,
        pool: &HashPool,
        checks: &Counter,
        name: &str,
        password: &Secret,
    ) -> Result<Option<Identity>, Overloaded> {
        if let Some(id) = self.verify_cached(name, password) {
            return Ok(Some(id));
        }
        let (users, name, password) = (Arc::clone(self), name.to_string(), password.clone());
        let checks = checks.clone();
        pool.run(move || {
            checks.inc();
            users.verify_hash_at(&name, &password, Instant::now())
        })
        .await
    }
}

/// A hash with the same algorithm and parameters as `model` (fresh salt). Its password
/// need not be secret: a check against the dummy never logs anyone in.
fn dummy_like(model: &Hash) -> Option<Hash> {
    let pw = "gatehouse-unknown-user";
    match model {
        Hash::Bcrypt(h) => {
            let parts: bcrypt::HashParts = h.parse().ok()?;
            bcrypt::hash(pw, parts.get_cost()).ok().map(Hash::Bcrypt)
        }
        Hash::Argon2(h) => {
            let ph = PasswordHash::new(h).ok()?;
            let params = argon2::Params::try_from(&ph).ok()?;
            let algorithm = argon2::Algorithm::try_from(ph.algorithm.as_str()).ok()?;
            let version = match ph.version {
                Some(v) => argon2::Version::try_from(v).ok()?,
                None => argon2::Version::default(),
            };
            Argon2::new(algorithm, version, params)
                .hash_password(pw.as_bytes())
                .ok()
                .map(|h| Hash::Argon2(h.to_string()))
        }
    }
}

fn cache_key(name: &str, password: &Secret) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((name.len() as u64).to_be_bytes());
    h.update(name.as_bytes());
    h.update(password.expose().as_bytes());
    h.finalize().into()
}

fn parse_line(line: &str) -> Result<(String, Entry), String> {
    let mut parts = line.splitn(3, ':');
    let name = parts.next().unwrap_or_default();
    let hash = parts.next().ok_or("expected name:hash[:groups]")?;
    check_user_name(name)?;
    let hash = parse_hash(hash)?;
    let groups = match parts.next() {
        None => Vec::new(),
        Some(g) => g
            .split(',')
            .map(|g| {
                let g = g.trim();
                check_user_name(g)
                    .map(|_| g.to_string())
                    .map_err(|e| format!("group: {e}"))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok((name.to_string(), Entry { hash, groups }))
}

/// A user or group name: 1 to 255 bytes, no `:`, `,`, whitespace or control characters.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("name must be 1 to {MAX_NAME} bytes"));
    }
    if name
        .chars()
        .any(|c| c == ':' || c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "name {name:?} holds ':', ',', a space or a control character"
        ));
    }
    Ok(())
}

fn parse_hash(h: &str) -> Result<Hash, String> {
    if h.starts_with("$2y$") || h.starts_with("$2b$") || h.starts_with("$2a$") {
        let parts: bcrypt::HashParts = h.parse().map_err(|e| format!("bad bcrypt hash: {e}"))?;
        if parts.get_cost() > MAX_BCRYPT_COST {
            return Err(format!(
                "bcrypt cost {} is above {MAX_BCRYPT_COST}",
                parts.get_cost()
            ));
        }
        return Ok(Hash::Bcrypt(h.to_string()));
    }
    if h.starts_with("$argon2id$") {
        let ph = PasswordHash::new(h).map_err(|e| format!("bad argon2 hash: {e}"))?;
        let p = argon2::Params::try_from(&ph).map_err(|e| format!("bad argon2 parameters: {e}"))?;
        if p.m_cost() > MAX_ARGON2_M_KIB || p.t_cost() > MAX_ARGON2_T || p.p_cost() > MAX_ARGON2_P {
            return Err(format!(
                "argon2 parameters above the limits m={MAX_ARGON2_M_KIB},t={MAX_ARGON2_T},p={MAX_ARGON2_P}"
            ));
        }
        return Ok(Hash::Argon2(h.to_string()));
    }
    Err("unsupported hash: use argon2id ($argon2id$) or bcrypt ($2y$/$2b$), e.g. from `gatehouse passwd`".into())
}

/// Which hash [`hash_password`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlgorithm {
    /// argon2id with the crate's defaults (m=19 MiB, t=2, p=1: OWASP's minimum).
    #[default]
    Argon2id,
    /// bcrypt at this cost (12 is the usual choice); passwords over 72 bytes are refused.
    Bcrypt { cost: u32 },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot hash password: {0}")]
pub struct HashError(String);

/// Hashes a password for the users file, with a fresh random salt.
pub fn hash_password(password: &Secret, alg: HashAlgorithm) -> Result<String, HashError> {
    let pw = password.expose().as_bytes();
    match alg {
        HashAlgorithm::Argon2id => Argon2::default()
            .hash_password(pw)
            .map(|h| h.to_string())
            .map_err(|e| HashError(e.to_string())),
        HashAlgorithm::Bcrypt { cost } => {
            bcrypt::non_truncating_hash(pw, cost).map_err(|e| HashError(e.to_string()))
        }
    }
}

/// A users-file line for `gatehouse passwd`.
pub fn format_entry(name: &str, hash: &str, groups: &[String]) -> Result<String, String> {
    check_user_name(name)?;
    parse_hash(hash)?;
    for g in groups {
        check_user_name(g)?;
    }
    Ok(if groups.is_empty() {
        format!("{name}:{hash}")
    } else {
        format!("{name}:{hash}:{}", groups.join(","))
    })
}

/// Bounds of the verified-credentials cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// A cached success is trusted this long; a changed password is picked up on reload at
    /// once (the cache belongs to one loaded users file).
    pub ttl: Duration,
    /// Most entries; when full, expired entries go, and if none had expired, all go.
    pub max_entries: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            ttl: Duration::from_secs(60),
            max_entries: 1024,
        }
    }
}

/// Recent successful verifications, keyed by SHA-256 over (user, password): the password
/// itself is not kept, and only correct passwords are ever inserted, so wrong guesses cannot
/// fill it. Memory is bounded by `max_entries` (about 64 bytes each).
#[derive(Debug)]
pub struct VerifiedCache {
    limits: CacheLimits,
    entries: HashMap<[u8; 32], Instant>,
}

impl VerifiedCache {
    pub fn new(limits: CacheLimits) -> VerifiedCache {
        VerifiedCache {
            limits,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<()> {
        let expires = *self.entries.get(key)?;
        if now < expires {
            return Some(());
        }
        self.entries.remove(key);
        None
    }

    fn insert(&mut self, key: [u8; 32], now: Instant) {
        if self.limits.max_entries == 0 || self.limits.ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.limits.max_entries && !self.entries.contains_key(&key) {
            self.entries.retain(|_, exp| *exp > now);
            if self.entries.len() >= self.limits.max_entries {
                self.entries.clear();
            }
        }
        self.entries.insert(key, now + self.limits.ttl);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
#[path = "users_tests.rs"]
mod tests;
