//! `citadel rbac`: least-privilege etcd roles and users for citadel under one prefix.
//!
//! Three roles, each limited to the prefix (`/citadel/` by default):
//!
//! | role | may |
//! |---|---|
//! | `citadel-controller` | read and write everything under the prefix: it *is* the cluster manager |
//! | `citadel-operator` | read everything under the prefix, write `engines/` |
//! | `citadel-user` | read and write `requests/`; read `decisions/`, `engines/`, `health/`, `profiles/` |
//!
//! A user gets `readwrite`, not `write`, on `requests/`: `citadel submit` compares the request
//! key's create revision (so it never overwrites someone's request), `citadel status` reads the
//! request beside its decision, and etcd checks a compare as a read.
//!
//! `citadel rbac agent ENGINE` makes one more role and user per engine, `citadel-agent-ENGINE`,
//! for the `citadel agent` beside that engine's Docker. It may touch its own keys only:
//!
//! | keys | may | why |
//! |---|---|---|
//! | `engines/ENGINE` (that key) | readwrite | it registers the engine, keeping the operator's fields |
//! | `health/ENGINE` (that key) | readwrite | liveness on its lease; read back to adopt the lease on restart |
//! | `assignments/ENGINE/` (prefix) | read | range + watch what it must run; its run reports' txns compare an assignment's mod revision, which etcd checks as a read |
//! | `runs/ENGINE/` (prefix) | write | its run reports |
//!
//! `engines/ENGINE` and `health/ENGINE` are single keys, not prefixes: a prefix `engines/e1`
//! would also grant `engines/e10`. The two ranges end with `/` for the same reason. etcd 3.4
//! asks no permission to grant a lease or keep it alive; a put on a lease needs write on the
//! key (and on every key already on that lease), and revoking it write on every key on it: here
//! only `health/ENGINE`.
//!
//! Without `--apply` the command prints the etcdctl commands; with it, it runs the same
//! operations through etcd's auth API, as the admin the global flags name, and skips what
//! exists already. Users are given as `NAME` (no password: etcd with `--client-cert-auth`
//! takes a client certificate's CN as the user name) or `NAME:PASSWORD`, etcdctl's own form.
//!
//! It touches only etcd's auth API (roles, users, `auth enable`), never a key under the prefix.

use std::time::Duration;

use clap::{Args, Subcommand};
use etcd_client::{Client, Permission, UserAddOptions};

use crate::keys::Keys;
use crate::model::EngineId;
use crate::store::{self, EtcdConfig, StoreError};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RbacArgs {
    #[command(subcommand)]
    pub command: Option<RbacCommand>,
    /// Create the roles and users in etcd now, with the admin credentials of the global flags
    /// (etcd's root user), instead of printing the etcdctl commands. What exists is kept.
    #[arg(long)]
    pub apply: bool,
    /// Also make sure the `root` user exists with the `root` role, and turn authentication on.
    /// A new root gets the password of the global --user when that names root; else none,
    /// and authenticates by a client certificate with CN=root.
    #[arg(long)]
    pub enable_auth: bool,
    /// A user with the citadel-controller role: NAME (client certificate, CN=NAME) or
    /// NAME:PASSWORD. Repeatable. With no --add-* at all: one user per role, named after it.
    #[arg(long = "add-controller", value_name = "NAME[:PASSWORD]")]
    pub controllers: Vec<String>,
    /// A user with the citadel-operator role (as --add-controller).
    #[arg(long = "add-operator", value_name = "NAME[:PASSWORD]")]
    pub operators: Vec<String>,
    /// A user with the citadel-user role (as --add-controller).
    #[arg(long = "add-user", value_name = "NAME[:PASSWORD]")]
    pub users: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum RbacCommand {
    /// The role and user of one engine's `citadel agent`, both `citadel-agent-ENGINE`: it may
    /// write its engine record, its health key and its run reports, and read its assignments;
    /// nothing of another engine, no request, no decision.
    Agent(AgentArgs),
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The engine the agent runs (its engine id).
    #[arg(value_name = "ENGINE")]
    pub engine: String,
    /// Create the role and user in etcd now (as `rbac --apply`), instead of printing the etcdctl
    /// commands. What exists is kept.
    #[arg(long)]
    pub apply: bool,
    /// The agent's user: NAME (client certificate, CN=NAME) or NAME:PASSWORD. Default: the
    /// role's name, citadel-agent-ENGINE, authenticating by a client certificate.
    // Its id is not `user`: that would hide the global `--user` from this command.
    #[arg(long = "agent-user", id = "agent_user", value_name = "NAME[:PASSWORD]")]
    pub user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {}", store::short(.source))]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd did not answer within {0:?} ({1})")]
    Timeout(Duration, String),
    #[error("{0}")]
    Usage(String),
}

/// citadel's three roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Controller,
    Operator,
    User,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Controller, Role::Operator, Role::User];

    pub fn name(self) -> &'static str {
        match self {
            Role::Controller => "citadel-controller",
            Role::Operator => "citadel-operator",
            Role::User => "citadel-user",
        }
    }

    /// What the role may touch under `keys`' prefix. Every key ends with `/`, so that
    /// `/citadel/` does not also grant `/citadel-bench/`.
    pub fn grants(self, keys: &Keys) -> Vec<Grant> {
        let g = Grant::prefix;
        match self {
            Role::Controller => vec![g(Access::ReadWrite, keys.root().to_string())],
            Role::Operator => vec![
                g(Access::Read, keys.root().to_string()),
                g(Access::Write, keys.engines()),
            ],
            Role::User => vec![
                g(Access::ReadWrite, keys.requests()),
                g(Access::Read, keys.decisions()),
                g(Access::Read, keys.engines()),
                g(Access::Read, keys.healths()),
                g(Access::Read, keys.profiles()),
                // What the agents report of each container (`status`, `submit --wait=running`).
                g(Access::Read, keys.runs()),
            ],
        }
    }
}

/// etcd's permission types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    /// As etcdctl spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        }
    }

    /// The permission on `key` alone.
    pub fn permission(self, key: &str) -> Permission {
        match self {
            Access::Read => Permission::read(key),
            Access::Write => Permission::write(key),
            Access::ReadWrite => Permission::read_write(key),
        }
    }
}

/// One permission of a role: on every key under a prefix, or on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub access: Access,
    pub key: String,
    /// Every key starting with `key` (which then ends with `/`), or `key` alone.
    pub prefix: bool,
}

impl Grant {
    pub fn prefix(access: Access, key: String) -> Grant {
        debug_assert!(key.ends_with('/'), "{key}");
        Grant {
            access,
            key,
            prefix: true,
        }
    }

    pub fn key(access: Access, key: String) -> Grant {
        Grant {
            access,
            key,
            prefix: false,
        }
    }

    /// As etcd's auth API takes it.
    pub fn permission(&self) -> Permission {
        let p = self.access.permission(&self.key);
        if self.prefix { p.with_prefix() } else { p }
    }

    /// How `apply` reports it: `read on keys under /citadel/` or `readwrite on key /citadel/…`.
    fn describe(&self) -> String {
        let what = if self.prefix { "keys under" } else { "key" };
        format!("{} on {what} {}", self.access.as_str(), self.key)
    }
}

/// The role (and default user) name of `engine`'s agent.
pub fn agent_role(engine: &EngineId) -> String {
    format!("citadel-agent-{engine}")
}

/// What `engine`'s agent may touch: its engine record and health key (each that key alone, so
/// that `e1` does not also grant `e10`), its assignments (read: range, watch, and the compare
/// of its run reports' txns) and its run reports (write).
pub fn agent_grants(keys: &Keys, engine: &EngineId) -> Vec<Grant> {
    vec![
        Grant::key(Access::ReadWrite, keys.engine(engine)),
        Grant::key(Access::ReadWrite, keys.health(engine)),
        Grant::prefix(Access::Read, keys.assignments_of(engine)),
        Grant::prefix(Access::Write, keys.runs_of(engine)),
    ]
}

/// A user to create (if missing) and the role to grant it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: String,
    /// `None`: no password; the user authenticates by a client certificate with CN=name.
    pub password: Option<String>,
    pub role: String,
}

/// Everything `rbac` does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub prefix: String,
    /// Each role's name and permissions.
    pub roles: Vec<(String, Vec<Grant>)>,
    pub users: Vec<NewUser>,
    pub enable_auth: bool,
}

/// `spec` (`NAME` or `NAME:PASSWORD`, given to `flag`) as a user with `role`.
fn parse_user(spec: &str, flag: &str, role: &str) -> Result<NewUser, RbacError> {
    let (name, password) = match spec.split_once(':') {
        Some((name, password)) => (name, Some(password.to_string())),
        None => (spec, None),
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RbacError::Usage(format!(
            "{flag}: {spec:?} is not a user name"
        )));
    }
    Ok(NewUser {
        name: name.to_string(),
        password,
        role: role.to_string(),
    })
}

fn add_flag(role: Role) -> String {
    format!("--add-{}", role.name().trim_start_matches("citadel-"))
}

/// What to create for `engine`'s agent: its role, and its user (`user`, or one named after the
/// role, without a password).
pub fn agent_plan(engine: &str, user: Option<&str>, keys: &Keys) -> Result<Plan, RbacError> {
    let engine = EngineId::new(engine)
        .map_err(|e| RbacError::Usage(format!("agent: engine {engine:?}: {e}")))?;
    let role = agent_role(&engine);
    let user = parse_user(user.unwrap_or(&role), "--agent-user", &role)?;
    Ok(Plan {
        prefix: keys.root().to_string(),
        roles: vec![(role, agent_grants(keys, &engine))],
        users: vec![user],
        enable_auth: false,
    })
}

/// What to create for `args` under `keys`' prefix. `admin` is the connection's settings: a
/// new root user takes their password when they name root.
pub fn plan(args: &RbacArgs, keys: &Keys, admin: &EtcdConfig) -> Result<Plan, RbacError> {
    let roles = Role::ALL
        .iter()
        .map(|r| (r.name().to_string(), r.grants(keys)))
        .collect();
    let mut users = Vec::new();
    let given = [
        (Role::Controller, &args.controllers),
        (Role::Operator, &args.operators),
        (Role::User, &args.users),
    ];
    if given.iter().all(|(_, names)| names.is_empty()) {
        for role in Role::ALL {
            users.push(parse_user(role.name(), &add_flag(role), role.name())?);
        }
    } else {
        for (role, names) in given {
            for spec in names {
                users.push(parse_user(spec, &add_flag(role), role.name())?);
            }
        }
    }
    if args.enable_auth {
        let password = admin
            .auth
            .as_ref()
            .filter(|c| c.user == "root")
            .map(|c| c.password.clone());
        users.push(NewUser {
            name: "root".into(),
            password,
            role: "root".into(),
        });
    }
    Ok(Plan {
        prefix: keys.root().to_string(),
        roles,
        users,
        enable_auth: args.enable_auth,
    })
}

/// A word for `sh`: as it is when it is plainly safe, else in single quotes.
fn sh(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The plan as etcdctl commands (etcd 3.4's syntax), one a line.
pub fn script(plan: &Plan) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "# citadel's etcd roles and users under {} (citadel rbac). Run them as etcd's root user,",
        plan.prefix
    ));
    line("# with etcdctl's settings in the environment: ETCDCTL_API=3 ETCDCTL_ENDPOINTS".into());
    line(
        "# ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY (ETCDCTL_USER). On an etcd that has some".into(),
    );
    line(
        "# of them already, `add` fails with \"already exists\"; `citadel rbac --apply` skips"
            .into(),
    );
    line("# what exists.".into());
    for (role, grants) in &plan.roles {
        line(format!("etcdctl role add {}", sh(role)));
        for g in grants {
            line(format!(
                "etcdctl role grant-permission {}{} {} {}",
                if g.prefix { "--prefix=true " } else { "" },
                sh(role),
                g.access.as_str(),
                sh(&g.key)
            ));
        }
    }
    for u in &plan.users {
        match (&u.password, u.name == "root") {
            (None, _) => {
                line(format!(
                    "# {}: no password; authenticates by a client certificate with CN={}",
                    u.name, u.name
                ));
                line(format!("etcdctl user add {} --no-password", sh(&u.name)));
            }
            // root's password came from the admin's own settings (perhaps the environment):
            // let etcdctl ask for it rather than print it.
            (Some(_), true) => {
                line("# etcdctl asks for root's password".into());
                line("etcdctl user add root".into());
            }
            (Some(password), false) => line(format!(
                "etcdctl user add {} --new-user-password {}",
                sh(&u.name),
                sh(password)
            )),
        }
        line(format!(
            "etcdctl user grant-role {} {}",
            sh(&u.name),
            sh(&u.role)
        ));
    }
    if plan.enable_auth {
        line("etcdctl auth enable".into());
    }
    out
}

/// Bounds one auth call; `what` names it in errors.
async fn call<T>(
    what: String,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<Result<T, etcd_client::Error>, RbacError> {
    tokio::time::timeout(store::CALL_TIMEOUT, fut)
        .await
        .map_err(|_| RbacError::Timeout(store::CALL_TIMEOUT, what))
}

/// etcd's "already exists" answer to `role add` and `user add`.
fn exists(e: &etcd_client::Error) -> bool {
    store::EtcdErrorKind::of(e) == store::EtcdErrorKind::AlreadyExists
}

/// Runs the plan through etcd's auth API. Idempotent: an existing role or user is kept (a
/// user's password is left as it is), and granting again what is granted changes nothing.
/// Each step is reported through `say` as it is done.
pub async fn apply(
    client: &Client,
    plan: &Plan,
    mut say: impl FnMut(String),
) -> Result<(), RbacError> {
    let mut auth = client.auth_client();
    let failed = |what: &str, source| RbacError::Etcd {
        what: what.to_string(),
        source,
    };
    for (name, grants) in &plan.roles {
        let name = name.as_str();
        let what = format!("role add {name}");
        match call(what.clone(), auth.role_add(name)).await? {
            Ok(_) => say(format!("role {name}: added")),
            Err(e) if exists(&e) => say(format!("role {name}: exists")),
            Err(e) => return Err(failed(&what, e)),
        }
        for g in grants {
            let what = format!(
                "role grant-permission {name} {} {}",
                g.access.as_str(),
                g.key
            );
            call(
                what.clone(),
                auth.role_grant_permission(name, g.permission()),
            )
            .await?
            .map_err(|e| failed(&what, e))?;
            say(format!("role {name}: {}", g.describe()));
        }
    }
    for u in &plan.users {
        let what = format!("user add {}", u.name);
        let added = match &u.password {
            Some(p) => {
                call(
                    what.clone(),
                    auth.user_add(u.name.as_str(), p.as_str(), None),
                )
                .await?
            }
            None => {
                let opts = UserAddOptions::new().with_no_pwd();
                call(what.clone(), auth.user_add(u.name.as_str(), "", Some(opts))).await?
            }
        };
        match added {
            Ok(_) if u.password.is_some() => {
                say(format!("user {}: added, with a password", u.name))
            }
            Ok(_) => say(format!(
                "user {}: added without a password (a client certificate with CN={})",
                u.name, u.name
            )),
            Err(e) if exists(&e) => say(format!("user {}: exists, left as it is", u.name)),
            Err(e) => return Err(failed(&what, e)),
        }
        let what = format!("user grant-role {} {}", u.name, u.role);
        call(
            what.clone(),
            auth.user_grant_role(u.name.as_str(), u.role.as_str()),
        )
        .await?
        .map_err(|e| failed(&what, e))?;
        say(format!("user {}: has role {}", u.name, u.role));
    }
    if plan.enable_auth {
        // etcd 3.4 answers success when authentication is on already.
        let what = "auth enable".to_string();
        call(what.clone(), auth.auth_enable())
            .await?
            .map_err(|e| failed(&what, e))?;
        say("authentication: enabled".into());
    }
    Ok(())
}

/// `citadel rbac`: each line it has to say goes to `say` (the CLI's stdout).
pub async fn run(
    args: RbacArgs,
    keys: &Keys,
    etcd: &EtcdConfig,
    say: fn(&str),
) -> Result<(), RbacError> {
    let (plan, apply_now) = match &args.command {
        Some(RbacCommand::Agent(a)) => (agent_plan(&a.engine, a.user.as_deref(), keys)?, a.apply),
        None => (plan(&args, keys, etcd)?, args.apply),
    };
    if !apply_now {
        say(script(&plan).trim_end());
        return Ok(());
    }
    let client = store::connect(etcd, Some(Duration::from_secs(5))).await?;
    apply(&client, &plan, |line| say(&line)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(users: &[&str]) -> RbacArgs {
        RbacArgs {
            command: None,
            apply: false,
            enable_auth: false,
            controllers: vec![],
            operators: vec![],
            users: users.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn roles_stay_under_the_prefix() {
        let keys = Keys::new("/tenant-a").expect("prefix");
        for role in Role::ALL {
            for g in role.grants(&keys) {
                assert!(
                    g.key.starts_with("/tenant-a/") && g.prefix,
                    "{role:?}: {g:?}"
                );
            }
        }
        let user = Role::User.grants(&keys);
        assert!(user.contains(&Grant {
            access: Access::ReadWrite,
            key: "/tenant-a/requests/".into(),
            prefix: true,
        }));
        for g in &user {
            assert!(!g.key.contains("leader") && g.key != keys.root(), "{g:?}");
            if g.access != Access::Read {
                assert!(g.key.ends_with("/requests/"), "{g:?}");
            }
        }
    }

    #[test]
    fn default_users_are_named_after_their_roles_and_have_no_password() {
        let p = plan(&args(&[]), &Keys::default(), &EtcdConfig::default()).expect("plan");
        let names: Vec<_> = p
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.role.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("citadel-controller", "citadel-controller"),
                ("citadel-operator", "citadel-operator"),
                ("citadel-user", "citadel-user")
            ]
        );
        assert!(p.users.iter().all(|u| u.password.is_none()));
    }

    #[test]
    fn script_uses_etcdctl_syntax_and_quotes_passwords() {
        let mut a = args(&["alice", "carol:it's"]);
        a.enable_auth = true;
        let admin = EtcdConfig::default().with_auth("root", "secret");
        let s = script(&plan(&a, &Keys::default(), &admin).expect("plan"));
        for want in [
            "etcdctl role add citadel-user\n",
            "etcdctl role grant-permission --prefix=true citadel-operator read /citadel/\n",
            "etcdctl role grant-permission --prefix=true citadel-operator write /citadel/engines/\n",
            "etcdctl role grant-permission --prefix=true citadel-user readwrite /citadel/requests/\n",
            "etcdctl user add alice --no-password\n",
            "etcdctl user add carol --new-user-password 'it'\\''s'\n",
            "etcdctl user grant-role carol citadel-user\n",
            "etcdctl user add root\n",
            "etcdctl user grant-role root root\n",
            "etcdctl auth enable\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in:\n{s}");
        }
        assert!(
            !s.contains("secret"),
            "the admin's password is printed:\n{s}"
        );
        assert!(!s.contains("citadel-controller --no-password"), "{s}");
    }

    #[test]
    fn bad_user_names_are_refused() {
        let e = plan(&args(&[":pw"]), &Keys::default(), &EtcdConfig::default())
            .expect_err("empty name");
        assert!(e.to_string().contains("--add-user"), "{e}");
    }

    #[test]
    fn an_agent_gets_its_own_keys_and_nothing_wider() {
        let keys = Keys::default();
        let p = agent_plan("e1", None, &keys).expect("plan");
        let (role, grants) = &p.roles[0];
        assert_eq!(p.roles.len(), 1);
        assert_eq!(role, "citadel-agent-e1");
        let g = |access, key: &str, prefix| Grant {
            access,
            key: key.into(),
            prefix,
        };
        assert_eq!(
            grants,
            &[
                g(Access::ReadWrite, "/citadel/engines/e1", false),
                g(Access::ReadWrite, "/citadel/health/e1", false),
                g(Access::Read, "/citadel/assignments/e1/", true),
                g(Access::Write, "/citadel/runs/e1/", true),
            ]
        );
        // Nothing of `e10`: the keys are single keys, the prefixes end with `/`.
        let e10 = EngineId::new("e10").unwrap();
        let others = [
            keys.engine(&e10),
            keys.health(&e10),
            keys.assignment(&e10, &crate::model::RequestId::new("r").unwrap()),
            keys.run(&e10, &crate::model::RequestId::new("r").unwrap()),
        ];
        for other in &others {
            for g in grants {
                let covers = if g.prefix {
                    other.starts_with(&g.key)
                } else {
                    *other == g.key
                };
                assert!(!covers, "{g:?} covers {other}");
            }
        }
        assert_eq!(
            p.users,
            [NewUser {
                name: "citadel-agent-e1".into(),
                password: None,
                role: "citadel-agent-e1".into()
            }]
        );
        let s = script(&p);
        for want in [
            "etcdctl role add citadel-agent-e1\n",
            "etcdctl role grant-permission citadel-agent-e1 readwrite /citadel/engines/e1\n",
            "etcdctl role grant-permission citadel-agent-e1 readwrite /citadel/health/e1\n",
            "etcdctl role grant-permission --prefix=true citadel-agent-e1 read /citadel/assignments/e1/\n",
            "etcdctl role grant-permission --prefix=true citadel-agent-e1 write /citadel/runs/e1/\n",
            "etcdctl user add citadel-agent-e1 --no-password\n",
            "etcdctl user grant-role citadel-agent-e1 citadel-agent-e1\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in:\n{s}");
        }
        assert!(!s.contains("auth enable"), "{s}");
    }

    #[test]
    fn an_agent_user_may_be_named_and_bad_engines_are_refused() {
        let p = agent_plan("e1", Some("host-7:pw"), &Keys::default()).expect("plan");
        assert_eq!(p.users[0].name, "host-7");
        assert_eq!(p.users[0].password.as_deref(), Some("pw"));
        assert_eq!(p.users[0].role, "citadel-agent-e1");
        for bad in ["", "a/b", "a b", "e1/"] {
            let e = agent_plan(bad, None, &Keys::default()).expect_err(bad);
            assert!(e.to_string().starts_with("agent: engine"), "{e}");
        }
        let e = agent_plan("e1", Some(":pw"), &Keys::default()).expect_err("empty user");
        assert!(e.to_string().contains("--agent-user"), "{e}");
    }
}
