//! The command line's one table: every command and `zonit ctl` command
//! with its arguments, options and exit status. Help, usage errors and
//! the bash completion script are all made from it, so a command added
//! here is documented and completed everywhere at once; the parsers
//! (src/main.rs, the ctl client) accept exactly what it lists.

use std::fmt::Write as _;
use std::process::ExitCode;

/// What a command's positional words are, for completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Words {
    /// Nothing to complete.
    None,
    /// A file name.
    File,
    /// A unit name of the running agent.
    Unit,
    /// A command name (of `zonit help`).
    Command,
    /// One of these words.
    List(&'static str),
}

/// One option of a command.
#[derive(Debug)]
pub struct Opt {
    /// Its short form, if any (`-n`).
    pub short: Option<char>,
    /// Its long form (`--lines`).
    pub long: &'static str,
    /// The name of its value, if it takes one (`N`).
    pub value: Option<&'static str>,
    /// What it does.
    pub help: &'static str,
}

/// One command: `run`, or a `ctl` command (`ctl logs`).
#[derive(Debug)]
pub struct Command {
    /// Its words after `zonit` (`ctl logs`).
    pub path: &'static str,
    /// Its positional arguments, as in a usage line.
    pub args: &'static str,
    /// What it does.
    pub about: &'static str,
    /// Its options, `-h, --help` aside.
    pub opts: &'static [Opt],
    /// What its positional words are.
    pub words: Words,
    /// Its exit status.
    pub exit: &'static str,
    /// Internal: left out of listings and completion.
    pub hidden: bool,
}

const fn opt(
    short: Option<char>,
    long: &'static str,
    value: Option<&'static str>,
    help: &'static str,
) -> Opt {
    Opt {
        short,
        long,
        value,
        help,
    }
}

const fn cmd(
    path: &'static str,
    args: &'static str,
    about: &'static str,
    opts: &'static [Opt],
    words: Words,
    exit: &'static str,
) -> Command {
    Command {
        path,
        args,
        about,
        opts,
        words,
        exit,
        hidden: false,
    }
}

/// The exit status of every `zonit ctl` command but `exec`.
const CTL_EXIT: &str = "0 done; 1 the agent answered with an error; 2 usage error; \
3 the agent could not be reached or did not answer within --timeout";

/// Every command, in the order help lists them.
pub const COMMANDS: &[Command] = &[
    cmd(
        "init",
        "",
        "as PID 1: boot the host and supervise its units; also what zonit \
         does when started as PID 1 or as `init`",
        &[],
        Words::None,
        "never returns as PID 1; 2 when not PID 1",
    ),
    cmd(
        "run",
        "",
        "supervise the config's units on a running host, without host boot",
        &[opt(
            Some('c'),
            "config",
            Some("FILE"),
            "the config (default /etc/zonit.toml)",
        )],
        Words::None,
        "0 after an orderly stop (SIGTERM, SIGINT); with [host] exit_with, \
         that unit's status (its exit code, 128 + signal, 0 for a guest's \
         poweroff, 1 otherwise); 1 the config is invalid or the agent could \
         not start; 2 usage error",
    ),
    cmd(
        "check",
        "FILE",
        "validate a config; errors as FILE:LINE:COL: message",
        &[],
        Words::File,
        "0 valid; 1 invalid or unreadable; 2 usage error",
    ),
    cmd(
        "ctl",
        "COMMAND",
        "control a running agent over its control socket",
        &[
            opt(
                None,
                "socket",
                Some("PATH"),
                "the agent's control socket (default /run/zonit/control.sock)",
            ),
            opt(
                None,
                "timeout",
                Some("DURATION"),
                "give up when the agent has not answered within DURATION \
                 (500ms, 30s, 2m; 0s waits for ever); default 60s, none for \
                 logs -f, exec, console and events",
            ),
        ],
        Words::None,
        CTL_EXIT,
    ),
    cmd(
        "ctl status",
        "",
        "one row per unit: kind, state (and health), pid, restarts, uptime, last exit",
        &[opt(None, "json", None, "print the rows as a JSON array")],
        Words::None,
        CTL_EXIT,
    ),
    cmd(
        "ctl start",
        "NAME",
        "start a unit; returns once it is ready (or failed)",
        &[],
        Words::Unit,
        CTL_EXIT,
    ),
    cmd(
        "ctl stop",
        "NAME",
        "stop a unit; returns once it is stopped",
        &[],
        Words::Unit,
        CTL_EXIT,
    ),
    cmd(
        "ctl restart",
        "NAME",
        "stop a unit, then start it",
        &[],
        Words::Unit,
        CTL_EXIT,
    ),
    cmd(
        "ctl logs",
        "NAME",
        "a unit's captured output (a guest's serial console)",
        &[
            opt(Some('n'), "lines", Some("N"), "only the last N lines"),
            opt(Some('f'), "follow", None, "keep printing new output"),
        ],
        Words::Unit,
        CTL_EXIT,
    ),
    cmd(
        "ctl exec",
        "ZONE [--] CMD [ARGS...]",
        "run a command in a running zone with this terminal's stdin, stdout \
         and stderr; words after ZONE are the command's own",
        &[opt(
            Some('t'),
            "tty",
            None,
            "on a new terminal in the zone (stdin must be a terminal)",
        )],
        Words::Unit,
        "the command's status (128 + signal when killed); 126 it cannot be \
         executed, 127 not found; 1 the agent refused; 2 usage error; 3 the \
         agent could not be reached",
    ),
    cmd(
        "ctl console",
        "GUEST",
        "the guest's serial console, interactive; Ctrl-] detaches",
        &[
            opt(None, "read-only", None, "watch without typing"),
            opt(None, "force", None, "take the console from its writer"),
        ],
        Words::Unit,
        CTL_EXIT,
    ),
    cmd(
        "ctl events",
        "",
        "stream what happens: units starting, running, exiting, restarting, \
         failing, health changes, OOM kills; reloads, shutdown",
        &[
            opt(None, "json", None, "one JSON object a line"),
            opt(
                None,
                "since",
                Some("DURATION"),
                "first the kept events of the last DURATION",
            ),
        ],
        Words::None,
        CTL_EXIT,
    ),
    cmd(
        "ctl reload",
        "",
        "re-read the config and apply the changes",
        &[],
        Words::None,
        CTL_EXIT,
    ),
    cmd(
        "ctl poweroff",
        "",
        "orderly shutdown, then power off (PID 1 only)",
        &[],
        Words::None,
        CTL_EXIT,
    ),
    cmd(
        "ctl reboot",
        "",
        "orderly shutdown, then reboot (PID 1 only)",
        &[],
        Words::None,
        CTL_EXIT,
    ),
    cmd(
        "ctl halt",
        "",
        "orderly shutdown, then halt (PID 1 only)",
        &[],
        Words::None,
        CTL_EXIT,
    ),
    cmd(
        "ctl help",
        "[COMMAND]",
        "help on a ctl command (as zonit help ctl COMMAND)",
        &[],
        Words::Command,
        "0; 2 no such command",
    ),
    Command {
        hidden: true,
        ..cmd(
            "vmm",
            "...",
            "internal: one guest's monitor, started by the agent (zonit vmm --help)",
            &[],
            Words::None,
            "0 the guest powered off, 1 its setup failed, 2 it rebooted, 3 it crashed",
        )
    },
    cmd(
        "help",
        "[COMMAND...]",
        "help on zonit or on a command (zonit help ctl exec)",
        &[],
        Words::Command,
        "0; 2 no such command",
    ),
    cmd(
        "completion",
        "bash",
        "print the bash completion script",
        &[],
        Words::List("bash"),
        "0; 2 usage error",
    ),
    cmd(
        "version",
        "",
        "print zonit's version",
        &[],
        Words::None,
        "0",
    ),
];

/// The command named by `path` (`"ctl logs"`).
pub fn find(path: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.path == path)
}

/// Whether `word` is a command of its own right after `zonit`.
pub fn is_command(word: &str) -> bool {
    find(word).is_some_and(|_| !word.contains(' '))
}

/// The commands right under `parent` (`""` for zonit's own, `"ctl"`).
fn children(parent: &str) -> impl Iterator<Item = &'static Command> {
    COMMANDS.iter().filter(move |c| {
        let under = match parent {
            "" => !c.path.contains(' '),
            p => c
                .path
                .strip_prefix(p)
                .and_then(|s| s.strip_prefix(' '))
                .is_some_and(|s| !s.contains(' ')),
        };
        under && !c.hidden
    })
}

fn flags(o: &Opt) -> String {
    let mut s = match o.short {
        Some(c) => format!("-{c}, --{}", o.long),
        None => format!("--{}", o.long),
    };
    if let Some(v) = o.value {
        s.push(' ');
        s.push_str(v);
    }
    s
}

/// The usage line of `c`.
pub fn usage_line(c: &Command) -> String {
    let mut s = format!("usage: zonit {}", c.path);
    for o in c.opts {
        let _ = write!(s, " [{}]", flags(o).replace(", ", "|"));
    }
    if !c.args.is_empty() {
        s.push(' ');
        s.push_str(c.args);
    }
    s
}

/// The full help of `c`: usage, what it does, options, commands under
/// it, exit status.
pub fn help(c: &Command) -> String {
    let mut s = usage_line(c);
    s.push_str("\n\n");
    wrap(&mut s, c.about, 0);
    s.push_str("\noptions:\n");
    let help = opt(Some('h'), "help", None, "print this help");
    for o in c.opts.iter().chain(std::iter::once(&help)) {
        let _ = write!(s, "  {:<22} ", flags(o));
        wrap(&mut s, o.help, 25);
    }
    list(&mut s, c.path);
    s.push('\n');
    wrap(&mut s, &format!("exit status: {}", c.exit), 0);
    s
}

/// Appends `text` to `s` in lines of at most 79 columns, continuation
/// lines indented by `indent` (the column the text starts at).
fn wrap(s: &mut String, text: &str, indent: usize) {
    let mut col = indent;
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 && col + 1 + word.len() > 79 {
            s.push('\n');
            s.extend(std::iter::repeat_n(' ', indent));
            col = indent;
        } else if i > 0 {
            s.push(' ');
            col += 1;
        }
        s.push_str(word);
        col += word.len();
    }
    s.push('\n');
}

fn list(s: &mut String, parent: &str) {
    let mut subs = children(parent).peekable();
    if subs.peek().is_none() {
        return;
    }
    s.push_str("\ncommands:\n");
    for sub in subs {
        let name = sub.path.rsplit(' ').next().unwrap_or(sub.path);
        let _ = write!(s, "  {name:<12} ");
        wrap(s, sub.about, 15);
    }
}

/// zonit's own help: its commands and how to get more.
pub fn overview() -> String {
    let mut s = String::from("usage: zonit COMMAND [ARGS...]\n");
    list(&mut s, "");
    s.push_str(
        "\nzonit help COMMAND (or zonit COMMAND --help) tells more; \
         docs/cli.md has every command and exit status.\n",
    );
    s
}

/// The help of the command named by `words` (`["ctl", "exec"]`), or
/// zonit's own for none; printed to stdout (0), or a usage error.
pub fn print_help(words: &[&str]) -> ExitCode {
    if words.is_empty() {
        print!("{}", overview());
        return ExitCode::SUCCESS;
    }
    let path = words.join(" ");
    match find(&path) {
        Some(c) => {
            print!("{}", help(c));
            ExitCode::SUCCESS
        }
        None => usage_error("help", &format!("no command `{path}`")),
    }
}

/// Reports a usage error of command `path`, naming how to get help;
/// exits 2.
pub fn usage_error(path: &str, msg: &str) -> ExitCode {
    eprintln!("zonit {path}: {msg}\nsee `zonit help {path}`");
    ExitCode::from(2)
}

/// Every option word of `c`, `-h` and `--help` included.
fn option_words(c: &Command) -> Vec<String> {
    let mut out = Vec::new();
    for o in c.opts {
        if let Some(s) = o.short {
            out.push(format!("-{s}"));
        }
        out.push(format!("--{}", o.long));
    }
    out.extend(["-h".into(), "--help".into()]);
    out
}

/// The bash completion script, made from [`COMMANDS`].
pub fn bash_completion() -> String {
    let mut takes_value = Vec::new();
    let mut cases = String::new();
    for c in COMMANDS.iter().filter(|c| !c.hidden) {
        for o in c.opts.iter().filter(|o| o.value.is_some()) {
            if let Some(s) = o.short {
                takes_value.push(format!("-{s}"));
            }
            takes_value.push(format!("--{}", o.long));
        }
        let mut words = option_words(c);
        words.extend(children(c.path).filter_map(|s| s.path.rsplit(' ').next().map(String::from)));
        let what = match c.words {
            Words::None => "",
            Words::File => "files",
            Words::Unit => "units",
            Words::Command => "commands",
            Words::List(list) => {
                words.extend(list.split(' ').map(String::from));
                ""
            }
        };
        let _ = writeln!(
            cases,
            "        '{}') words='{}'; what={what} ;;",
            c.path,
            words.join(" ")
        );
    }
    takes_value.sort();
    takes_value.dedup();
    let top: Vec<&str> = children("").map(|c| c.path).collect();
    let ctl: Vec<&str> = children("ctl")
        .filter_map(|c| c.path.strip_prefix("ctl "))
        .collect();
    format!(
        r#"# bash completion for zonit; made by `zonit completion bash`.
# Install: zonit completion bash > /etc/bash_completion.d/zonit
_zonit() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local path='' i w n=0 skip=0 words='{top}' what=''
    case " {takes_value} " in
        *" $prev "*)
            case "$prev" in
                --config|-c|--socket) COMPREPLY=($(compgen -f -- "$cur")) ;;
                *) COMPREPLY=() ;;
            esac
            return ;;
    esac
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        if ((skip)); then skip=0; continue; fi
        case " {takes_value} " in *" $w "*) skip=1; continue ;; esac
        case "$w" in -*) continue ;; esac
        if [[ -z $path || $path == ctl ]] && [[ " $( _zonit_subs "$path" ) " == *" $w "* ]]; then
            path=${{path:+$path }}$w
        else
            n=$((n + 1))
        fi
    done
    case "$path" in
{cases}    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return
    fi
    case "$what" in
        files) COMPREPLY=($(compgen -f -- "$cur")) ;;
        units) ((n == 0)) && COMPREPLY=($(compgen -W "$(zonit ctl status 2>/dev/null | awk 'NR > 1 {{ print $1 }}')" -- "$cur")) ;;
        commands)
            if [[ $path == help && $n == 0 ]]; then words='{top}'
            elif [[ $path == 'ctl help' && $n == 0 ]] || [[ $path == help && $n == 1 && $prev == ctl ]]; then words='{ctl}'
            else words=''; fi
            COMPREPLY=($(compgen -W "$words" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -W "$words" -- "$cur")) ;;
    esac
}}
_zonit_subs() {{
    case "$1" in
        '') echo '{top}' ;;
        ctl) echo '{ctl}' ;;
    esac
}}
complete -F _zonit zonit
"#,
        top = top.join(" "),
        ctl = ctl.join(" "),
        takes_value = takes_value.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_an_about_and_an_exit_status_and_a_unique_path() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert!(!c.about.is_empty() && !c.exit.is_empty(), "{}", c.path);
            assert!(
                COMMANDS[..i].iter().all(|d| d.path != c.path),
                "{} listed twice",
                c.path
            );
        }
    }

    #[test]
    fn help_shows_usage_options_and_exit_status() {
        let h = help(find("ctl logs").unwrap());
        assert!(
            h.starts_with("usage: zonit ctl logs [-n|--lines N] [-f|--follow] NAME\n"),
            "{h}"
        );
        assert!(
            h.contains("-n, --lines N") && h.contains("-h, --help"),
            "{h}"
        );
        assert!(h.contains("exit status: 0 done;"), "{h}");
    }

    #[test]
    fn ctl_help_lists_its_commands_and_the_overview_hides_internal_ones() {
        let h = help(find("ctl").unwrap());
        for sub in ["status", "exec", "events", "halt"] {
            assert!(h.contains(&format!("\n  {sub} ")), "{sub} missing: {h}");
        }
        let o = overview();
        assert!(
            o.contains("\n  ctl ") && o.contains("\n  completion "),
            "{o}"
        );
        assert!(!o.contains("vmm"), "{o}");
    }

    #[test]
    fn only_single_words_are_top_level_commands() {
        assert!(is_command("run") && is_command("ctl") && is_command("vmm"));
        assert!(!is_command("ctl exec") && !is_command("exec"));
    }
}
