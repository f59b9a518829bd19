//! `citadel completions SHELL` and `citadel man`: both from the same clap definitions as the
//! command line itself, so they never drift from it.
//!
//! The ids a command takes (requests, engines) live in etcd, not in the definitions: the
//! scripts for bash, zsh and fish complete them by calling the hidden `citadel __complete
//! requests|engines`, which reads them with the same settings (`CITADEL_ETCD`, `--etcd`,
//! `--prefix`) and prints one a line, or nothing at all when etcd does not answer within a
//! second. clap_complete's own dynamic completion is behind an unstable feature; this hook is
//! a few lines of each shell's script.

use std::time::Duration;

use clap::CommandFactory;
use etcd_client::{Client, GetOptions};

use super::output::write_line;
use super::{Cli, CliError};
use crate::keys::{Key, Keys};
use crate::store::{self, EtcdConfig};

/// What `citadel __complete` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdKind {
    Requests,
    Engines,
}

/// The most ids a completion offers.
const MOST: i64 = 5000;

pub(super) fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "citadel", &mut buf);
    let script = String::from_utf8_lossy(&buf);
    write_line(&with_ids(shell, script.trim_end()));
    Ok(())
}

/// The commands whose positional ids are completed from etcd, by shell words.
const REQUEST_IDS: &str = "status|release|\"requests show\"|\"requests rm\"*";
const ENGINE_IDS: &str =
    "\"engine show\"|\"engine rm\"|\"engine cordon\"|\"engine uncordon\"|\"engine drain\"";

/// `script` with the completion of ids hooked in.
fn with_ids(shell: clap_complete::Shell, script: &str) -> String {
    use clap_complete::Shell;
    match shell {
        Shell::Bash => format!(
            "{script}\n{}",
            BASH.replace("@REQUESTS@", REQUEST_IDS)
                .replace("@ENGINES@", ENGINE_IDS)
        ),
        Shell::Fish => format!("{script}\n{FISH}"),
        Shell::Zsh => {
            // The positionals of the commands that name an existing request or engine.
            let script = script
                .replace(
                    ":id -- The request'\\''s id:_default'",
                    ":id -- The request'\\''s id:_citadel_request_ids'",
                )
                .replace(
                    ":ids -- The requests'\\'' ids:_default'",
                    ":ids -- The requests'\\'' ids:_citadel_request_ids'",
                )
                .replace(
                    ":id -- The engine'\\''s id:_default'",
                    ":id -- The engine'\\''s id:_citadel_engine_ids'",
                );
            format!("{ZSH}\n{script}")
        }
        _ => script.to_string(),
    }
}

const BASH: &str = r#"
# Ids from etcd (citadel __complete), where a command takes an existing request or engine.
_citadel_ids() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} w i kind=""
    local words=() flags=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
        --etcd | --prefix) flags+=("$w" "${COMP_WORDS[i+1]}") ;;
        --etcd=* | --prefix=*) flags+=("$w") ;;
        esac
        [[ $w == -* ]] || words+=("$w")
    done
    for ((i = 0; i < ${#words[@]}; i++)); do
        case ${words[i]} in
        status | release | requests | engine)
            case "${words[*]:i}" in
            @REQUESTS@) kind=requests ;;
            @ENGINES@) kind=engines ;;
            esac
            break
            ;;
        esac
    done
    if [[ -n $kind && $cur != -* && $prev != -* ]]; then
        COMPREPLY=($(compgen -W "$(citadel "${flags[@]}" __complete "$kind" 2>/dev/null)" -- "$cur"))
        return 0
    fi
    _citadel "$@"
}
if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _citadel_ids -o nosort -o bashdefault -o default citadel
else
    complete -F _citadel_ids -o bashdefault -o default citadel
fi"#;

const FISH: &str = r#"# Ids from etcd (citadel __complete), where a command takes an existing request or engine.
complete -c citadel -n "__fish_seen_subcommand_from status release" -f -a "(citadel __complete requests 2>/dev/null)"
complete -c citadel -n "__fish_seen_subcommand_from requests; and __fish_seen_subcommand_from show rm" -f -a "(citadel __complete requests 2>/dev/null)"
complete -c citadel -n "__fish_seen_subcommand_from engine; and __fish_seen_subcommand_from show rm cordon uncordon drain" -f -a "(citadel __complete engines 2>/dev/null)""#;

const ZSH: &str = r#"#compdef citadel
# Ids from etcd (citadel __complete), where a command takes an existing request or engine.
_citadel_request_ids() {
    local -a ids
    ids=(${(f)"$(citadel __complete requests 2>/dev/null)"})
    compadd -a ids
}
_citadel_engine_ids() {
    local -a ids
    ids=(${(f)"$(citadel __complete engines 2>/dev/null)"})
    compadd -a ids
}"#;

/// `citadel __complete KIND`: the ids, one a line; nothing (and exit 0) when etcd cannot be
/// reached quickly, so that a shell's completion never hangs or prints an error.
pub(super) async fn ids(etcd: &EtcdConfig, keys: &Keys, kind: IdKind) -> Result<(), CliError> {
    let quick = Duration::from_secs(1);
    let listed = tokio::time::timeout(quick, async {
        let client = store::connect(etcd, Some(quick)).await.ok()?;
        list_ids(&client, keys, kind).await.ok()
    })
    .await;
    match listed {
        Ok(Some(ids)) if !ids.is_empty() => write_line(&ids.join("\n")),
        Ok(_) => {}
        Err(_) => tracing::debug!("__complete: etcd did not answer within {quick:?}"),
    }
    Ok(())
}

async fn list_ids(client: &Client, keys: &Keys, kind: IdKind) -> Result<Vec<String>, CliError> {
    let prefix = match kind {
        IdKind::Requests => keys.requests(),
        IdKind::Engines => keys.engines(),
    };
    let opts = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_limit(MOST);
    let got = super::timed(client.kv_client().get(prefix, Some(opts))).await?;
    let mut ids: Vec<String> = got
        .kvs()
        .iter()
        .filter_map(|kv| match keys.parse(kv.key()) {
            Some(Key::Request(id)) if kind == IdKind::Requests => Some(id.to_string()),
            Some(Key::Engine(id)) if kind == IdKind::Engines => Some(id.to_string()),
            _ => None,
        })
        .collect();
    ids.sort();
    Ok(ids)
}

pub(super) fn man() -> Result<(), CliError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| CliError::Usage(format!("man page: {e}")))?;
    write_line(String::from_utf8_lossy(&buf).trim_end());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and positional of every command says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let mut cmd = Cli::command();
        cmd.build();
        walk(&cmd, "citadel", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
