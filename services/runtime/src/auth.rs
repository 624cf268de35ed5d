//! Who may call what, where: principals, roles per namespace, and the
//! method table every call is checked against.
//!
//! A principal is named in the auth file (`--auth-file`, TOML, re-read when
//! it changes) and authenticates by a bearer token, stored only as its
//! SHA-256, or by the subject of a client certificate (mTLS). It holds roles
//! per namespace (`*` for every namespace):
//!
//! | role | may |
//! |---|---|
//! | `producer` | submit tasks and workflows, cancel them, read results |
//! | `worker` | open a worker session (Connect) and lease from its namespace |
//! | `reader` | read tasks, workflows, events, workers, schedules, dead letters |
//! | `admin` | everything: pause queues, replay, forget, manage schedules |
//!
//! Every RPC has one [`Permission`] in [`METHODS`]; a method missing from the
//! table is denied (fail closed), health and reflection are open. The layer
//! authenticates and checks that the principal holds the permission in some
//! namespace; the handler, once it has decoded the request's namespace, calls
//! [`authorize`] to check that namespace. Without an auth file and tokens,
//! everything is open.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tower::{Layer, Service};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How often the auth file is checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Submit tasks and workflows.
    Submit,
    /// Cancel tasks and workflows.
    Cancel,
    /// Read tasks, workflows, events, workers and schedules.
    Read,
    /// Open a worker session.
    Work,
    /// Operate: pause, replay, forget, schedules.
    Admin,
}

impl Permission {
    fn verb(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Cancel => "cancel",
            Self::Read => "read",
            Self::Work => "run a worker",
            Self::Admin => "administer",
        }
    }

    /// The least role that grants this permission.
    fn least_role(self) -> Role {
        match self {
            Self::Submit | Self::Cancel => Role::Producer,
            Self::Read => Role::Reader,
            Self::Work => Role::Worker,
            Self::Admin => Role::Admin,
        }
    }
}

/// A role a principal holds in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submit, cancel, read results.
    Producer,
    /// Connect and lease.
    Worker,
    /// Read everything of the namespace.
    Reader,
    /// Everything.
    Admin,
}

impl Role {
    /// Whether this role grants `permission`.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Self::Admin => true,
            Self::Producer => matches!(permission, Submit | Cancel | Read),
            Self::Worker => matches!(permission, Work),
            Self::Reader => matches!(permission, Read),
        }
    }

    /// The role's name in the auth file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::Worker => "worker",
            Self::Reader => "reader",
            Self::Admin => "admin",
        }
    }
}

/// The permission every RPC needs, by its full path. A method not listed
/// here is denied to every caller when authentication is on; a test checks
/// that every method of the contracts is listed.
pub const METHODS: &[(&str, Permission)] = &[
    (
        "/conveyor.v1.SubmissionService/SubmitTask",
        Permission::Submit,
    ),
    (
        "/conveyor.v1.SubmissionService/SubmitTasks",
        Permission::Submit,
    ),
    (
        "/conveyor.v1.SubmissionService/SubmitWorkflow",
        Permission::Submit,
    ),
    (
        "/conveyor.v1.SubmissionService/CancelTask",
        Permission::Cancel,
    ),
    (
        "/conveyor.v1.SubmissionService/CancelWorkflow",
        Permission::Cancel,
    ),
    (
        "/conveyor.v1.SubmissionService/ReplayTask",
        Permission::Admin,
    ),
    ("/conveyor.v1.ResultsService/GetTask", Permission::Read),
    ("/conveyor.v1.ResultsService/WaitTask", Permission::Read),
    ("/conveyor.v1.ResultsService/WatchTask", Permission::Read),
    ("/conveyor.v1.ResultsService/ForgetTask", Permission::Admin),
    (
        "/conveyor.v1.ResultsService/ListDeadLetters",
        Permission::Read,
    ),
    ("/conveyor.v1.ResultsService/WatchEvents", Permission::Read),
    ("/conveyor.v1.ResultsService/GetWorkflow", Permission::Read),
    ("/conveyor.v1.ResultsService/WaitWorkflow", Permission::Read),
    (
        "/conveyor.v1.ResultsService/WatchWorkflow",
        Permission::Read,
    ),
    ("/conveyor.v1.DispatchService/Connect", Permission::Work),
    ("/conveyor.v1.DispatchService/ListWorkers", Permission::Read),
    ("/conveyor.v1.DispatchService/ListQueues", Permission::Read),
    ("/conveyor.v1.DispatchService/PauseQueue", Permission::Admin),
    (
        "/conveyor.v1.DispatchService/ResumeQueue",
        Permission::Admin,
    ),
    (
        "/conveyor.v1.SchedulingService/GetSchedulerStatus",
        Permission::Read,
    ),
    (
        "/conveyor.v1.SchedulingService/GetSchedule",
        Permission::Read,
    ),
    (
        "/conveyor.v1.SchedulingService/ListSchedules",
        Permission::Read,
    ),
    (
        "/conveyor.v1.SchedulingService/ListScheduleRuns",
        Permission::Read,
    ),
    (
        "/conveyor.v1.SchedulingService/CreateSchedule",
        Permission::Admin,
    ),
    (
        "/conveyor.v1.SchedulingService/UpdateSchedule",
        Permission::Admin,
    ),
    (
        "/conveyor.v1.SchedulingService/DeleteSchedule",
        Permission::Admin,
    ),
    (
        "/conveyor.v1.SchedulingService/PauseSchedule",
        Permission::Admin,
    ),
    (
        "/conveyor.v1.SchedulingService/ResumeSchedule",
        Permission::Admin,
    ),
    (
        "/conveyor.v1.SchedulingService/TriggerSchedule",
        Permission::Admin,
    ),
];

/// The rule for `path`, if the table has one.
pub fn rule(path: &str) -> Option<Permission> {
    METHODS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, permission)| *permission)
}

/// Calls whose response is a stream: they hold a stream slot for their life.
fn is_stream(path: &str) -> bool {
    matches!(
        path,
        "/conveyor.v1.DispatchService/Connect"
            | "/conveyor.v1.ResultsService/WatchTask"
            | "/conveyor.v1.ResultsService/WatchEvents"
            | "/conveyor.v1.ResultsService/WatchWorkflow"
    )
}

/// Calls that count against a principal's submissions per second.
fn is_submission(path: &str) -> bool {
    matches!(
        path,
        "/conveyor.v1.SubmissionService/SubmitTask"
            | "/conveyor.v1.SubmissionService/SubmitTasks"
            | "/conveyor.v1.SubmissionService/SubmitWorkflow"
    )
}

/// A principal's limits; what a client does beyond them gets
/// `RESOURCE_EXHAUSTED` with a retry hint.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Calls in flight at once (long polls included, streams not).
    pub max_in_flight: u32,
    /// Open streams at once (worker sessions, watches).
    pub max_streams: u32,
    /// Submission calls (SubmitTask, SubmitTasks, SubmitWorkflow) per
    /// second, with a burst of one second's worth; 0: unlimited.
    pub submissions_per_second: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: 5_000,
            max_streams: 1_000,
            submissions_per_second: 0.0,
        }
    }
}

/// The roles of one principal.
#[derive(Debug)]
pub struct Principal {
    /// Its name in the auth file (logs and errors show it, never a token).
    pub name: String,
    /// Roles per namespace; `*` holds those of every namespace.
    roles: HashMap<String, Vec<Role>>,
    limits: Limits,
    usage: Arc<Usage>,
}

impl Principal {
    /// Whether the principal may do `permission` in `namespace` (its name as
    /// users see it: `default` for the default namespace).
    pub fn allows(&self, permission: Permission, namespace: &str) -> bool {
        [namespace, "*"].iter().any(|key| {
            self.roles
                .get(*key)
                .is_some_and(|roles| roles.iter().any(|role| role.grants(permission)))
        })
    }

    /// Whether the principal may do `permission` in any namespace.
    fn allows_somewhere(&self, permission: Permission) -> bool {
        self.roles
            .values()
            .any(|roles| roles.iter().any(|role| role.grants(permission)))
    }

    fn roles_in(&self, namespace: &str) -> String {
        let mut names: Vec<&str> = [namespace, "*"]
            .iter()
            .filter_map(|key| self.roles.get(*key))
            .flatten()
            .map(|role| role.name())
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

/// What the caller of one request is allowed, put in the request's
/// extensions by [`AuthLayer`] for [`authorize`].
#[derive(Debug, Clone)]
pub struct Access {
    principal: Arc<Principal>,
    permission: Permission,
}

impl Access {
    /// The principal's name.
    pub fn principal(&self) -> &str {
        &self.principal.name
    }

    /// PERMISSION_DENIED unless the caller may do what this call does in
    /// `namespace` (as users name it: `default` for "").
    pub fn check(&self, namespace: &str) -> Result<(), Status> {
        let namespace = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        if !valid_namespace(namespace) {
            use tonic_types::{ErrorDetails, StatusExt};
            return Err(Status::with_error_details(
                tonic::Code::InvalidArgument,
                format!(
                    "invalid argument: namespace: {namespace:?} is not 1..100 of [A-Za-z0-9_.-]"
                ),
                ErrorDetails::with_bad_request_violation(
                    "namespace",
                    "must be 1..100 of [A-Za-z0-9_.-]",
                ),
            ));
        }
        if self.principal.allows(self.permission, namespace) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "principal '{}' may not {} in namespace '{}' (its roles there: {}); \
             an admin can grant the '{}' role for that namespace in the auth file",
            self.principal.name,
            self.permission.verb(),
            namespace,
            self.principal.roles_in(namespace),
            self.permission.least_role().name(),
        )))
    }
}

impl Access {
    /// Whether the caller may do `permission` in `namespace` (as users name
    /// it), whatever this call needs.
    pub fn allows(&self, permission: Permission, namespace: &str) -> bool {
        let namespace = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        self.principal.allows(permission, namespace)
    }
}

/// The principal that made a request, from its extensions (`""` when
/// authentication is off), to record as a task's submitter.
pub fn principal_of(extensions: &http::Extensions) -> String {
    extensions
        .get::<Access>()
        .map(|access| access.principal.name.clone())
        .unwrap_or_default()
}

/// PERMISSION_DENIED when the caller holds its cancel permission in
/// `namespace` only as a producer and `submitted_by` is someone else: a
/// producer cancels its own tasks, an admin anyone's.
pub fn check_cancel(
    access: Option<&Access>,
    namespace: &str,
    submitted_by: &str,
    what: &str,
) -> Result<(), Status> {
    let Some(access) = access else {
        return Ok(());
    };
    if access.allows(Permission::Admin, namespace) || submitted_by == access.principal() {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "principal '{}' may cancel only what it submitted, and {what} was submitted by {}; \
         an admin of the namespace may cancel it",
        access.principal(),
        if submitted_by.is_empty() {
            "no principal (before authentication was on)".to_string()
        } else {
            "another principal".to_string()
        }
    )))
}

/// The caller's access, taken from a request before it is consumed; `None`
/// when authentication is off.
pub fn access_of<T>(request: &tonic::Request<T>) -> Option<Access> {
    request.extensions().get::<Access>().cloned()
}

/// PERMISSION_DENIED unless the caller of `request` may do what the call
/// does in `namespace`; everything is allowed when authentication is off.
pub fn authorize<T>(request: &tonic::Request<T>, namespace: &str) -> Result<(), Status> {
    match request.extensions().get::<Access>() {
        Some(access) => access.check(namespace),
        None => Ok(()),
    }
}

/// Checks `namespace` against an [`access_of`] result.
pub fn check(access: Option<&Access>, namespace: &str) -> Result<(), Status> {
    access.map_or(Ok(()), |access| access.check(namespace))
}

/// A principal's live counters.
#[derive(Debug)]
struct Usage {
    limits: Limits,
    in_flight: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
}

impl Usage {
    fn new(limits: &Limits) -> Self {
        Self {
            limits: *limits,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight as usize)),
            streams: Arc::new(Semaphore::new(limits.max_streams as usize)),
            bucket: Mutex::new(Bucket {
                tokens: limits.submissions_per_second.max(1.0),
                at: Instant::now(),
            }),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token at `rate` per second (burst: one second's worth), or
    /// says how long until one is available.
    fn take(&mut self, rate: f64, now: Instant) -> Result<(), Duration> {
        let burst = rate.max(1.0);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// The auth file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default, rename = "principal")]
    principals: Vec<PrincipalEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    limits: Option<Limits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: String,
    #[serde(default)]
    token_sha256: Vec<String>,
    #[serde(default)]
    tls_subject: Vec<String>,
    #[serde(default)]
    roles: HashMap<String, Vec<Role>>,
    #[serde(default)]
    limits: Option<Limits>,
}

/// Who is who: principals by token hash and by certificate subject.
#[derive(Debug, Default)]
pub struct Policy {
    by_token: HashMap<[u8; 32], Arc<Principal>>,
    by_subject: HashMap<String, Arc<Principal>>,
}

impl Policy {
    /// Whether there is nothing to check (no principal at all): every call
    /// is allowed.
    pub fn is_open(&self) -> bool {
        self.by_token.is_empty() && self.by_subject.is_empty()
    }

    /// The policy of plain `--auth-token` values: each token an admin of
    /// every namespace (the flat tokens of earlier releases).
    pub fn from_tokens(tokens: &[String]) -> Self {
        let mut policy = Self::default();
        policy.add_tokens(tokens, &HashMap::new());
        policy
    }

    fn add_tokens(&mut self, tokens: &[String], usage: &HashMap<String, Arc<Usage>>) {
        for (index, token) in tokens.iter().filter(|token| !token.is_empty()).enumerate() {
            let name = format!("auth-token-{}", index + 1);
            let limits = Limits::default();
            let principal = Arc::new(Principal {
                usage: reuse(usage, &name, &limits),
                name,
                roles: HashMap::from([("*".to_string(), vec![Role::Admin])]),
                limits,
            });
            self.by_token.insert(sha256(token.as_bytes()), principal);
        }
    }

    /// Parses an auth file's text; `origin` names it in errors. Counters of
    /// principals in `previous` with unchanged limits carry over.
    fn parse(text: &str, origin: &str, previous: Option<&Policy>) -> Result<Self, AuthError> {
        let file: AuthFile = toml::from_str(text)
            .map_err(|error| AuthError(format!("{origin}: {}", error.message())))?;
        let usage = previous.map(Policy::usage).unwrap_or_default();
        let mut policy = Self::default();
        let mut names = std::collections::HashSet::new();
        for (index, entry) in file.principals.into_iter().enumerate() {
            let at = format!("{origin}: principal[{index}] '{}'", entry.name);
            if entry.name.is_empty() || entry.name.len() > 200 {
                return Err(AuthError(format!(
                    "{origin}: principal[{index}]: name must be 1..200 characters"
                )));
            }
            if !names.insert(entry.name.clone()) {
                return Err(AuthError(format!(
                    "{at}: the name is used by another principal; names must be unique"
                )));
            }
            if entry.token_sha256.is_empty() && entry.tls_subject.is_empty() {
                return Err(AuthError(format!(
                    "{at}: no token_sha256 and no tls_subject: nobody could authenticate as it"
                )));
            }
            for namespace in entry.roles.keys() {
                if namespace != "*" && !valid_namespace(namespace) {
                    return Err(AuthError(format!(
                        "{at}: roles key '{namespace}' is not a namespace (1..100 of \
                         [A-Za-z0-9_.-]) or '*'"
                    )));
                }
            }
            let limits = entry.limits.or(file.defaults.limits).unwrap_or_default();
            check_limits(&limits, &at)?;
            let principal = Arc::new(Principal {
                usage: reuse(&usage, &entry.name, &limits),
                name: entry.name,
                roles: entry.roles,
                limits,
            });
            for hash in &entry.token_sha256 {
                let digest = parse_hash(hash).ok_or_else(|| {
                    AuthError(format!(
                        "{at}: token_sha256 '{hash}' is not 64 hex digits (the SHA-256 of \
                         the token; `conveyor auth hash-token` prints it)"
                    ))
                })?;
                if policy.by_token.insert(digest, principal.clone()).is_some() {
                    return Err(AuthError(format!(
                        "{at}: token_sha256 '{hash}' is listed twice; a token belongs to one principal"
                    )));
                }
            }
            for subject in &entry.tls_subject {
                if policy
                    .by_subject
                    .insert(subject.clone(), principal.clone())
                    .is_some()
                {
                    return Err(AuthError(format!(
                        "{at}: tls_subject '{subject}' is listed twice; a subject belongs to one principal"
                    )));
                }
            }
        }
        Ok(policy)
    }

    /// One line per principal: its name, how it authenticates (counts, no
    /// secrets), its roles and limits; for `conveyor auth check`.
    pub fn describe(&self) -> Vec<String> {
        let mut principals: Vec<&Arc<Principal>> = self
            .by_token
            .values()
            .chain(self.by_subject.values())
            .collect();
        principals.sort_by(|a, b| a.name.cmp(&b.name));
        principals.dedup_by(|a, b| Arc::ptr_eq(a, b));
        principals
            .into_iter()
            .map(|principal| {
                let tokens = self
                    .by_token
                    .values()
                    .filter(|p| Arc::ptr_eq(p, principal))
                    .count();
                let subjects: Vec<&str> = self
                    .by_subject
                    .iter()
                    .filter(|(_, p)| Arc::ptr_eq(p, principal))
                    .map(|(subject, _)| subject.as_str())
                    .collect();
                let mut roles: Vec<String> = principal
                    .roles
                    .iter()
                    .map(|(namespace, roles)| {
                        let names: Vec<&str> = roles.iter().map(|role| role.name()).collect();
                        format!("{namespace}={}", names.join("+"))
                    })
                    .collect();
                roles.sort();
                let limits = principal.limits;
                format!(
                    "{}: {tokens} token(s), subjects [{}], roles [{}], limits: {} in flight, {} streams, {}",
                    principal.name,
                    subjects.join(", "),
                    roles.join(", "),
                    limits.max_in_flight,
                    limits.max_streams,
                    if limits.submissions_per_second > 0.0 {
                        format!("{} submissions/s", limits.submissions_per_second)
                    } else {
                        "submissions unlimited".to_string()
                    }
                )
            })
            .collect()
    }

    /// Every principal's live counters by name, to carry over a reload.
    fn usage(&self) -> HashMap<String, Arc<Usage>> {
        self.by_token
            .values()
            .chain(self.by_subject.values())
            .map(|principal| (principal.name.clone(), principal.usage.clone()))
            .collect()
    }

    fn by_token(&self, token: &str) -> Option<&Arc<Principal>> {
        self.by_token.get(&sha256(token.as_bytes()))
    }

    fn by_certificate(&self, der: &[u8]) -> Option<&Arc<Principal>> {
        if self.by_subject.is_empty() {
            return None;
        }
        certificate_names(der)
            .iter()
            .find_map(|name| self.by_subject.get(name))
    }
}

fn reuse(usage: &HashMap<String, Arc<Usage>>, name: &str, limits: &Limits) -> Arc<Usage> {
    match usage.get(name) {
        Some(existing) if existing.limits == *limits => existing.clone(),
        _ => Arc::new(Usage::new(limits)),
    }
}

fn check_limits(limits: &Limits, at: &str) -> Result<(), AuthError> {
    if limits.max_in_flight == 0 || limits.max_streams == 0 {
        return Err(AuthError(format!(
            "{at}: limits.max_in_flight and limits.max_streams must be at least 1"
        )));
    }
    if !limits.submissions_per_second.is_finite() || limits.submissions_per_second < 0.0 {
        return Err(AuthError(format!(
            "{at}: limits.submissions_per_second must be 0 (unlimited) or a positive number"
        )));
    }
    Ok(())
}

fn valid_namespace(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses an auth file's text (`origin` names it in errors), as the server
/// would load it.
pub fn parse_auth_file(text: &str, origin: &str) -> Result<Policy, AuthError> {
    Policy::parse(text, origin, None)
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The hex SHA-256 of a token, as the auth file lists it.
pub fn hash_token(token: &str) -> String {
    sha256(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The names a client certificate answers to in `tls_subject`: its whole
/// subject as RFC 4514 prints it (`CN=worker-1,O=Example`), `CN=<common
/// name>`, and each subject alternative name as `DNS:<name>`, `URI:<uri>` or
/// `email:<address>`.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = vec![certificate.subject().to_string()];
    for common_name in certificate.subject().iter_common_name() {
        if let Ok(value) = common_name.as_str() {
            names.push(format!("CN={value}"));
        }
    }
    if let Ok(Some(alternatives)) = certificate.subject_alternative_name() {
        for name in &alternatives.value.general_names {
            match name {
                GeneralName::DNSName(value) => names.push(format!("DNS:{value}")),
                GeneralName::URI(value) => names.push(format!("URI:{value}")),
                GeneralName::RFC822Name(value) => names.push(format!("email:{value}")),
                _ => {}
            }
        }
    }
    names
}

/// The auth file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("auth file {0}")]
pub struct AuthError(String);

/// The policy in force, swapped when the auth file changes.
#[derive(Debug, Clone)]
pub struct Authenticator {
    current: Arc<RwLock<Arc<Policy>>>,
    file: Option<PathBuf>,
    tokens: Arc<Vec<String>>,
    private_reflection: bool,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::open()
    }
}

impl Authenticator {
    /// No authentication: every call is allowed.
    pub fn open() -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(Policy::default()))),
            file: None,
            tokens: Arc::new(Vec::new()),
            private_reflection: false,
        }
    }

    /// With `private`, reflection needs a credential (any principal) like
    /// the other calls; health stays open.
    pub fn with_private_reflection(mut self, private: bool) -> Self {
        self.private_reflection = private;
        self
    }

    /// Principals from `file` (if any) plus each of `tokens` as an admin of
    /// every namespace. A file that does not load is an error here, at start.
    pub fn load(file: Option<&Path>, tokens: &[String]) -> Result<Self, AuthError> {
        let policy = Self::read(file, tokens, None)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(policy))),
            file: file.map(Path::to_path_buf),
            tokens: Arc::new(tokens.to_vec()),
            private_reflection: false,
        })
    }

    fn read(
        file: Option<&Path>,
        tokens: &[String],
        previous: Option<&Policy>,
    ) -> Result<Policy, AuthError> {
        let mut policy = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    AuthError(format!("{}: cannot be read: {error}", path.display()))
                })?;
                Policy::parse(&text, &path.display().to_string(), previous)?
            }
            None => Policy::default(),
        };
        let usage = previous.map(Policy::usage).unwrap_or_default();
        policy.add_tokens(tokens, &usage);
        Ok(policy)
    }

    /// The policy now.
    pub fn policy(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads the auth file when it changes, until `shutdown`; a file that
    /// no longer loads leaves the previous policy in force (and says so).
    pub fn watch(&self, shutdown: CancellationToken) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let mut seen = modified(&path);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_INTERVAL) => {}
                }
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                let previous = this.policy();
                match Self::read(Some(&path), &this.tokens, Some(&previous)) {
                    Ok(policy) => {
                        *this
                            .current
                            .write()
                            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(policy);
                        tracing::info!(file = %path.display(), "auth file reloaded");
                    }
                    Err(error) => tracing::error!(
                        %error,
                        "auth file changed but does not load; the previous principals stay in force"
                    ),
                }
            }
        });
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// Authenticates every call (bearer token or client certificate), checks
/// the method table and the principal's limits, and leaves an [`Access`] in
/// the request's extensions for the handler's namespace check.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    authenticator: Authenticator,
}

impl AuthLayer {
    /// Checks calls against `authenticator`'s policy.
    pub fn new(authenticator: Authenticator) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// Service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Authenticator,
}

fn refuse<F>(status: Status) -> BoxFuture<Result<http::Response<tonic::body::Body>, F>>
where
    F: Send + 'static,
{
    Box::pin(async move { Ok(status.into_http()) })
}

fn exhausted(message: String, retry_after: Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

fn client_certificate<B>(request: &http::Request<B>) -> Option<Vec<u8>> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certificates = info.peer_certs()?;
    certificates.first().map(|der| der.to_vec())
}

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let policy = self.authenticator.policy();
        let path = request.uri().path();
        let reflection = path.starts_with("/grpc.reflection.");
        if policy.is_open()
            || path.starts_with("/grpc.health.")
            || (reflection && !self.authenticator.private_reflection)
        {
            return Box::pin(self.inner.call(request));
        }
        // Private reflection: any authenticated caller, no role needed.
        let permission = match rule(path) {
            Some(permission) => Some(permission),
            None if reflection => None,
            None => {
                return refuse(Status::permission_denied(format!(
                    "{path} has no authorization rule on this server, so it is denied to \
                     every caller; is the server older than the client?"
                )));
            }
        };
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|value| value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")));
        let principal = match presented {
            Some(Some(token)) => match policy.by_token(token) {
                Some(principal) => principal.clone(),
                None => {
                    return refuse(Status::unauthenticated(
                        "bearer token not accepted (unknown, or revoked from the auth file)",
                    ));
                }
            },
            Some(None) => {
                return refuse(Status::unauthenticated(
                    "authorization header is not 'Bearer <token>'",
                ));
            }
            None => match client_certificate(&request)
                .and_then(|der| policy.by_certificate(&der).cloned())
            {
                Some(principal) => principal,
                None => {
                    return refuse(Status::unauthenticated(
                        "missing authorization: Bearer <token> (or a client certificate \
                         whose subject the auth file names)",
                    ));
                }
            },
        };
        let Some(permission) = permission else {
            return Box::pin(self.inner.call(request));
        };
        if !principal.allows_somewhere(permission) {
            return refuse(Status::permission_denied(format!(
                "principal '{}' may not {} in any namespace; an admin can grant the '{}' role \
                 in the auth file",
                principal.name,
                permission.verb(),
                permission.least_role().name()
            )));
        }
        let usage = principal.usage.clone();
        let stream = is_stream(path);
        let permit = if stream {
            usage.streams.clone().try_acquire_owned().map_err(|_| {
                exhausted(
                    format!(
                        "principal '{}' has {} streams open, its limit; close one or retry later",
                        principal.name, principal.limits.max_streams
                    ),
                    Duration::from_secs(1),
                )
            })
        } else {
            usage.in_flight.clone().try_acquire_owned().map_err(|_| {
                exhausted(
                    format!(
                        "principal '{}' has {} calls in flight, its limit; retry with backoff",
                        principal.name, principal.limits.max_in_flight
                    ),
                    Duration::from_millis(100),
                )
            })
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err(status) => return refuse(status),
        };
        let rate = principal.limits.submissions_per_second;
        if rate > 0.0 && is_submission(path) {
            let taken = usage
                .bucket
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(rate, Instant::now());
            if let Err(wait) = taken {
                return refuse(exhausted(
                    format!(
                        "principal '{}' is over its {rate} submissions per second; retry in {} ms",
                        principal.name,
                        wait.as_millis().max(1)
                    ),
                    wait,
                ));
            }
        }
        request.extensions_mut().insert(Access {
            principal,
            permission,
        });
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            if stream {
                // The slot is held for the stream's life: the body owns it.
                Ok(response.map(|body| tonic::body::Body::new(Held { body, permit })))
            } else {
                drop(permit);
                Ok(response)
            }
        })
    }
}

/// A response body that holds a permit until the stream ends.
struct Held {
    body: tonic::body::Body,
    permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let _ = &self.permit;
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[defaults.limits]
max_in_flight = 10

[[principal]]
name = "api"
token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
roles = { billing = ["producer"], "*" = ["reader"] }

[[principal]]
name = "ops"
tls_subject = ["CN=ops"]
roles = { "*" = ["admin"] }
limits = { max_in_flight = 3, max_streams = 1, submissions_per_second = 2.0 }
"#;

    #[test]
    fn roles_grant_what_the_table_says() {
        let policy = Policy::parse(FILE, "test", None).unwrap();
        let api = policy.by_token("test").unwrap();
        assert_eq!(api.name, "api");
        assert!(api.allows(Permission::Submit, "billing"));
        assert!(!api.allows(Permission::Submit, "default"));
        assert!(api.allows(Permission::Read, "anything"));
        assert!(!api.allows(Permission::Admin, "billing"));
        assert!(!api.allows(Permission::Work, "billing"));
        assert_eq!(api.limits.max_in_flight, 10);
        assert!(policy.by_token("wrong").is_none());
        let ops = policy.by_subject.get("CN=ops").unwrap();
        assert_eq!(ops.limits.max_streams, 1);
        assert!(ops.allows(Permission::Admin, "x"));
    }

    #[test]
    fn a_bad_file_says_where() {
        for (text, expected) in [
            (
                "[[principal]]\nname = \"a\"\ntoken_sha256 = [\"abc\"]",
                "not 64 hex digits",
            ),
            ("[[principal]]\nname = \"a\"", "nobody could authenticate"),
            (
                "[[principal]]\nname = \"a\"\ntls_subject=[\"CN=a\"]\nroles = { x = [\"prodcer\"] }",
                "prodcer",
            ),
            (
                "[[principal]]\nname = \"a\"\ntls_subject=[\"CN=a\"]\nroles = { \"a b\" = [\"reader\"] }",
                "is not a namespace",
            ),
            (
                "[[principal]]\nname = \"a\"\ntls_subject=[\"CN=a\"]\n[[principal]]\nname = \"a\"\ntls_subject=[\"CN=b\"]",
                "unique",
            ),
            (
                "[[principal]]\nname = \"a\"\ntls_subject=[\"CN=a\"]\nlimits = { max_streams = 0 }",
                "at least 1",
            ),
            ("[[principals]]\nname = \"a\"", "unknown field"),
        ] {
            let error = Policy::parse(text, "f.toml", None).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.contains("f.toml"), "{error}");
        }
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket {
            tokens: 2.0,
            at: start,
        };
        assert!(bucket.take(2.0, start).is_ok());
        assert!(bucket.take(2.0, start).is_ok());
        let wait = bucket.take(2.0, start).unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(bucket.take(2.0, start + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn token_hashes_are_sha256_hex() {
        assert_eq!(
            hash_token("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(parse_hash(&format!("sha256:{}", hash_token("x"))).is_some());
    }
}
