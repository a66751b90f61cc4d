//! argon2id hashing, off the async runtime and with a bounded number at once: each hash holds
//! `m` KiB of memory and a core for tens of milliseconds, so the semaphore is what keeps memory
//! bounded under any load (extra logins wait their turn instead of allocating). The memory is
//! kept between hashes ([`Memory`]).

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use nix::sys::mman::{MmapAdvise, madvise};
use nix::unistd::{SysconfVar, sysconf};
use tokio::sync::Semaphore;

/// The argon2id cost parameters new hashes are made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Cost {
    /// OWASP's minimum for argon2id: 19 MiB, two passes, one lane.
    pub const OWASP_MINIMUM: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    fn params(self) -> Result<Params, HashingError> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| HashingError(format!("invalid argon2 parameters: {e}")))
    }
}

/// Hashing failed for a reason that is not the password's (bad parameters, a lost worker).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashingError(String);

/// Hashes and verifies passwords; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hasher {
    cost: Cost,
    /// One permit per hash being computed.
    permits: Arc<Semaphore>,
    /// The hashes' working memory, one buffer per permit at most.
    memory: Arc<Memory>,
    /// A PHC string at today's cost, verified against when an email is unknown, so that an
    /// unknown email takes as long as a wrong password (see [`dummy_hash`]).
    dummy: Arc<str>,
}

impl Hasher {
    /// A hasher making new hashes at `cost`, computing at most `concurrency` at once.
    pub fn new(cost: Cost, concurrency: usize) -> Result<Self, HashingError> {
        cost.params()?;
        Ok(Self {
            cost,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            memory: Arc::default(),
            dummy: dummy_hash(cost)?.into(),
        })
    }

    /// The cost of new hashes.
    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// Hash `password` into a PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub async fn hash(&self, password: &str) -> Result<String, HashingError> {
        let params = self.cost.params()?;
        let password = password.as_bytes().to_vec();
        let memory = self.memory.clone();
        self.run("hash", move || {
            let salt = random_bytes::<SALT_LEN>()?;
            let mut output = [0u8; OUTPUT_LEN];
            let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
            memory.hash(&argon2, &password, &salt, &mut output)?;
            phc_string(&params, &salt, &output)
        })
        .await
    }

    /// Whether `password` matches the PHC string `stored` (with the algorithm, version and
    /// parameters it carries). A string that cannot be parsed matches nothing.
    pub async fn verify(&self, password: &str, stored: &str) -> Result<bool, HashingError> {
        let password = password.as_bytes().to_vec();
        let stored = stored.to_owned();
        let memory = self.memory.clone();
        self.run("verify", move || {
            let Some(stored) = Stored::parse(&stored) else {
                return Ok(false);
            };
            let expected = stored.output.as_bytes();
            let mut output = vec![0u8; expected.len()];
            let argon2 = Argon2::new(stored.algorithm, stored.version, stored.params);
            if memory
                .hash(&argon2, &password, &stored.salt, &mut output)
                .is_err()
            {
                return Ok(false);
            }
            // Output's equality takes the same time wherever the first difference is.
            Ok(Output::new(&output).is_ok_and(|output| output == stored.output))
        })
        .await
    }

    /// Spend the time of a verification without an account to verify against.
    pub async fn verify_nothing(&self, password: &str) -> Result<(), HashingError> {
        self.verify(password, &self.dummy).await.map(drop)
    }

    /// Give the hashes' memory back to the system whenever no hash has been computed for
    /// `idle`, until `stop`: a burst of logins leaves the service as small as before it.
    pub async fn release_memory_when_idle(self, idle: Duration, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(idle / 3);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            if self.memory.release_if_idle(idle) {
                tracing::debug!("released argon2's memory after {idle:?} without a hash");
            }
        }
    }

    /// Whether `stored` was made with another algorithm, version or a lower cost than today's
    /// (and so is to be replaced after the next successful login).
    pub fn needs_upgrade(&self, stored: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return true;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return true;
        };
        parsed.algorithm.as_str() != Algorithm::Argon2id.ident().as_str()
            || parsed.version != Some(Version::V0x13.into())
            || params.m_cost() < self.cost.memory_kib
            || params.t_cost() < self.cost.iterations
            || params.p_cost() != self.cost.parallelism
    }

    /// Run `work` on the blocking pool once a permit is free. The queue's depth, the wait for a
    /// permit and the hash's own time are measured apart: a slow login is either too many
    /// hashes at once (raise the concurrency or add instances) or too costly a hash.
    async fn run<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce() -> Result<T, HashingError> + Send + 'static,
    ) -> Result<T, HashingError> {
        let queued = Instant::now();
        let permit = {
            let _waiting = Waiting::new();
            self.permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| HashingError(e.to_string()))?
        };
        metrics::histogram!("passwords_argon2_wait_seconds").record(queued.elapsed().as_secs_f64());
        metrics::counter!("passwords_argon2_operations_total", "operation" => operation).increment(1);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let outcome = work();
            drop(permit);
            metrics::histogram!("passwords_argon2_duration_seconds", "operation" => operation)
                .record(started.elapsed().as_secs_f64());
            outcome
        })
        .await
        .map_err(|e| HashingError(format!("the hashing task failed: {e}")))?
    }
}

/// One hash waiting for a permit, counted in `passwords_argon2_waiting` for as long as it
/// lives: also when the request is dropped while it waits.
struct Waiting;

impl Waiting {
    fn new() -> Self {
        metrics::gauge!("passwords_argon2_waiting").increment(1.0);
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("passwords_argon2_waiting").decrement(1.0);
    }
}

/// A stored PHC string, taken apart for verifying.
struct Stored {
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Salt,
    output: Output,
}

impl Stored {
    fn parse(phc: &str) -> Option<Self> {
        let parsed = PasswordHash::new(phc).ok()?;
        // As argon2's own verifier reads a string without a version: the current one.
        let version = match parsed.version {
            Some(version) => Version::try_from(version).ok()?,
            None => Version::default(),
        };
        Some(Self {
            algorithm: Algorithm::new(parsed.algorithm.as_str()).ok()?,
            version,
            params: Params::try_from(&parsed).ok()?,
            salt: parsed.salt?,
            output: parsed.hash?,
        })
    }
}

/// argon2's working memory, kept between hashes. A hash fills `m` KiB; memory mapped afresh
/// for each one costs a page fault every 4 KiB, a large share of the hash's time
/// (BENCHMARKS.md). There are never more buffers than hashes computed at once (the
/// permits), each as large as the largest cost it has served, and each is made in huge pages
/// where the kernel gives them ([`new_buffer`]). They are freed after a quiet while
/// ([`Hasher::release_memory_when_idle`]), so memory held for a burst of logins does not stay.
#[derive(Debug)]
struct Memory(Mutex<Pool>);

/// The buffers not in use, and when one was last given back.
#[derive(Debug)]
struct Pool {
    buffers: Vec<Vec<Block>>,
    last_used: Instant,
}

impl Default for Memory {
    fn default() -> Self {
        Self(Mutex::new(Pool {
            buffers: Vec::new(),
            last_used: Instant::now(),
        }))
    }
}

impl Memory {
    /// Free the buffers if none has been used for `idle`; whether it did.
    fn release_if_idle(&self, idle: Duration) -> bool {
        let released = {
            let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.buffers.is_empty() || pool.last_used.elapsed() < idle {
                return false;
            }
            std::mem::take(&mut pool.buffers)
        };
        drop(released);
        return_freed_memory();
        true
    }

    /// Hash with `argon2` into `output`, in a buffer taken from the pool (or made) and given
    /// back.
    fn hash(
        &self,
        argon2: &Argon2<'_>,
        password: &[u8],
        salt: &[u8],
        output: &mut [u8],
    ) -> Result<(), HashingError> {
        let blocks = argon2.params().block_count();
        let mut buffer = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .buffers
            .pop()
            .unwrap_or_default();
        if buffer.len() < blocks {
            buffer = new_buffer(blocks);
        }
        let outcome = argon2
            .hash_password_into_with_memory(password, salt, output, &mut buffer[..blocks])
            .map_err(|e| HashingError(e.to_string()));
        let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        pool.buffers.push(buffer);
        pool.last_used = Instant::now();
        outcome
    }
}

/// Hand the heap's free pages back to the system. glibc serves a buffer the size of argon2's
/// from its heap once one was freed before, and keeps the heap's pages when it is freed again.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointer of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}

/// A buffer of `blocks` zeroed blocks, backed by transparent huge pages where the kernel gives
/// them on request (its `madvise` mode, Debian's default). argon2 reads a block from anywhere in
/// its memory for each one it writes, so with 4 KiB pages nearly every read misses the TLB; in
/// 2 MiB pages the whole buffer fits in a few TLB entries (BENCHMARKS.md has the gain). Without
/// huge pages (a kernel without them, a container that disables them) the buffer is an ordinary
/// one and hashes come out the same.
fn new_buffer(blocks: usize) -> Vec<Block> {
    let mut buffer = Vec::with_capacity(blocks);
    // Before the first write: the kernel picks the page size when a page is first touched.
    advise_huge_pages(buffer.spare_capacity_mut());
    buffer.resize(blocks, Block::default());
    buffer
}

/// Ask for the whole pages inside `memory` to be backed by huge pages. Only advice: on failure
/// the pages stay ordinary.
fn advise_huge_pages<T>(memory: &mut [MaybeUninit<T>]) {
    let Ok(Some(page)) = sysconf(SysconfVar::PAGE_SIZE) else {
        return;
    };
    let Ok(page) = usize::try_from(page) else {
        return;
    };
    let start = memory.as_mut_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + size_of_val(memory)) / page * page;
    let Some(address) = NonNull::new(first as *mut c_void) else {
        return;
    };
    if end <= first {
        return;
    }
    // SAFETY: the range is whole pages inside `memory`, which is borrowed mutably here, so
    // nothing else uses it; MADV_HUGEPAGE changes which pages back it, never what it holds.
    #[allow(unsafe_code)]
    let advised = unsafe { madvise(address, end - first, MmapAdvise::MADV_HUGEPAGE) };
    if let Err(error) = advised {
        tracing::debug!(%error, "no huge pages for argon2's memory");
    }
}

/// What [`Hasher::verify_nothing`] verifies against: a PHC string with today's algorithm,
/// version and cost, a random salt and a random output as long as a real hash's. Verifying
/// any password against it computes one argon2id hash at today's cost, exactly like a wrong
/// password against a real credential, and never matches (the output is no password's hash but
/// by a 2^-256 chance). It costs no hash to make, so the service has none to compute at start
/// and the first unknown email is not told apart either.
fn dummy_hash(cost: Cost) -> Result<String, HashingError> {
    phc_string(
        &cost.params()?,
        &random_bytes::<SALT_LEN>()?,
        &random_bytes::<OUTPUT_LEN>()?,
    )
}

/// The PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) of an argon2id hash made with
/// `params`.
fn phc_string(params: &Params, salt: &[u8], output: &[u8]) -> Result<String, HashingError> {
    let invalid = |e: argon2::password_hash::phc::Error| HashingError(e.to_string());
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| HashingError(e.to_string()))?,
        salt: Some(Salt::new(salt).map_err(invalid)?),
        hash: Some(Output::new(output).map_err(invalid)?),
    };
    Ok(phc.to_string())
}

/// `N` bytes from the kernel's random source: aws-lc's generator would first seed itself from
/// CPU jitter, tens of milliseconds at start-up.
fn random_bytes<const N: usize>() -> Result<[u8; N], HashingError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| HashingError(format!("the system random source failed: {e}")))?;
    Ok(bytes)
}

/// The salt and output lengths of the hashes [`Hasher::hash`] makes (argon2's defaults).
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = Params::DEFAULT_OUTPUT_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: these tests check behaviour, not cost.
    const CHEAP: Cost = Cost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hasher = Hasher::new(CHEAP, 2).expect("hasher");
        let stored = hasher.hash("zq7#kd9w").await.expect("hash");
        assert!(stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{stored}");
        assert!(hasher.verify("zq7#kd9w", &stored).await.expect("verify"));
        assert!(!hasher.verify("zq7#kd9W", &stored).await.expect("verify"));
        assert!(
            !hasher
                .verify("zq7#kd9w", "not a phc string")
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn hashes_agree_with_argon2s_own_hasher_and_verifier_whatever_the_pooled_memory() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let hasher = Hasher::new(CHEAP, 1).expect("hasher");
        // Ours, checked by the crate's verifier.
        let ours = hasher.hash("zq7#kd9w").await.expect("hash");
        let parsed = PasswordHash::new(&ours).expect("a PHC string");
        assert!(Argon2::default().verify_password(b"zq7#kd9w", &parsed).is_ok());
        // The crate's (as stored by earlier releases), of several costs and algorithms, checked
        // by ours with one pooled buffer serving them all: larger, then smaller than before.
        for (algorithm, memory_kib) in [
            (Algorithm::Argon2id, 256),
            (Algorithm::Argon2id, 32),
            (Algorithm::Argon2i, 128),
        ] {
            let params = Params::new(memory_kib, 1, 1, None).expect("params");
            let theirs = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"zq7#kd9w")
                .expect("hash")
                .to_string();
            assert!(
                hasher.verify("zq7#kd9w", &theirs).await.expect("verify"),
                "{theirs}"
            );
            assert!(
                !hasher.verify("zq7#kd9W", &theirs).await.expect("verify"),
                "{theirs}"
            );
        }
        assert_eq!(
            hasher.memory.0.lock().expect("pool").buffers.len(),
            1,
            "one permit, one buffer"
        );
    }

    #[tokio::test]
    async fn idle_memory_is_released_and_made_again_when_needed() {
        let hasher = Hasher::new(CHEAP, 1).expect("hasher");
        let stored = hasher.hash("zq7#kd9w").await.expect("hash");
        let pooled = || hasher.memory.0.lock().expect("pool").buffers.len();
        assert!(
            !hasher.memory.release_if_idle(Duration::from_secs(3600)),
            "used just now"
        );
        assert_eq!(pooled(), 1);
        assert!(hasher.memory.release_if_idle(Duration::ZERO));
        assert_eq!(pooled(), 0);
        assert!(
            !hasher.memory.release_if_idle(Duration::ZERO),
            "nothing left to release"
        );
        assert!(hasher.verify("zq7#kd9w", &stored).await.expect("verify"));
        assert_eq!(pooled(), 1);
    }

    #[tokio::test]
    async fn hashes_below_todays_cost_need_an_upgrade() {
        let weak = Hasher::new(CHEAP, 1).expect("hasher");
        let stored = weak.hash("zq7#kd9w").await.expect("hash");
        assert!(!weak.needs_upgrade(&stored));
        let stronger = Hasher::new(
            Cost {
                memory_kib: 128,
                ..CHEAP
            },
            1,
        )
        .expect("hasher");
        assert!(stronger.needs_upgrade(&stored));
        assert!(stronger.needs_upgrade("$argon2i$v=19$m=128,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"));
        assert!(stronger.needs_upgrade("garbage"));
    }

    #[tokio::test]
    async fn the_dummy_hash_looks_like_a_real_one_and_matches_nothing() {
        let hasher = Hasher::new(CHEAP, 1).expect("hasher");
        let real = hasher.hash("zq7#kd9w").await.expect("hash");
        // Algorithm, version, cost, salt and output lengths alike: only the random values differ.
        let shape = |phc: &str| -> Vec<String> {
            let fields: Vec<&str> = phc.split('$').collect();
            let (head, tail) = fields.split_at(fields.len() - 2);
            head.iter()
                .map(|field| (*field).to_owned())
                .chain(tail.iter().map(|field| field.len().to_string()))
                .collect()
        };
        assert_eq!(shape(&hasher.dummy), shape(&real));
        PasswordHash::new(&hasher.dummy).expect("a valid PHC string");
        assert!(!hasher.needs_upgrade(&hasher.dummy));
        assert!(!hasher.verify("zq7#kd9w", &hasher.dummy).await.expect("verify"));
        hasher.verify_nothing("zq7#kd9w").await.expect("verify nothing");
    }

    #[test]
    fn the_default_cost_is_at_least_owasps() {
        let owasp = Cost::OWASP_MINIMUM;
        assert!(owasp.memory_kib >= 19456 && owasp.iterations >= 2 && owasp.parallelism == 1);
    }
}
