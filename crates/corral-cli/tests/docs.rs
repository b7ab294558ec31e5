//! The completions and man pages are generated from the CLI's own definitions: every
//! subcommand `corral --help` lists has a page, and every long flag its `--help` lists
//! is in that page and in the bash completion of that subcommand; bash really completes
//! with the script sourced.

mod common;

use std::path::Path;
use std::process::Command;

use common::corral_bin;

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(corral_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "corral {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `corral --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let section = help
        .split("Commands:\n")
        .nth(1)
        .expect("corral --help has a Commands section");
    let subs: Vec<String> = section
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .map(str::to_string)
        .collect();
    assert!(subs.len() >= 10, "too few subcommands found: {subs:?}");
    subs
}

/// The long flags `corral SUB --help` lists.
fn long_flags(sub: &str) -> Vec<String> {
    let help = stdout_of(&[sub, "--help"]);
    let mut flags: Vec<String> = help
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix('-')
                .filter(|_| !l.starts_with("--"))
                .map(|r| r.split_once(", ").map_or(r, |(_, rest)| rest))
                .unwrap_or(l);
            l.strip_prefix("--")
                .map(|f| f.split([' ', '=', '<', '[']).next().unwrap().to_string())
        })
        .filter(|f| !f.is_empty())
        .collect();
    flags.sort();
    flags.dedup();
    assert!(flags.contains(&"help".to_string()), "{sub}: {flags:?}");
    flags
}

/// The bash completion's block for one subcommand (`corral__subcmd__SUB)` to `;;`).
fn bash_block<'a>(script: &'a str, sub: &str) -> &'a str {
    let start = script
        .find(&format!(
            "        corral__subcmd__{})\n",
            sub.replace('-', "__")
        ))
        .unwrap_or_else(|| panic!("the bash completion has no case for {sub}"));
    let rest = &script[start..];
    &rest[..rest.find(";;").unwrap()]
}

#[test]
fn man_pages_and_completions_cover_every_subcommand_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let listed = stdout_of(&["man", "--out", dir.path().to_str().unwrap()]);
    let bash = stdout_of(&["completions", "bash"]);
    let zsh = stdout_of(&["completions", "zsh"]);
    let fish = stdout_of(&["completions", "fish"]);
    let page = |name: &str| {
        let p = dir.path().join(format!("{name}.1"));
        assert!(listed.contains(p.to_str().unwrap()), "{p:?} not listed");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let main = page("corral");
    assert!(
        main.starts_with(".ie") || main.contains(".TH corral 1"),
        "{main}"
    );
    for sub in subcommands() {
        let text = page(&format!("corral-{sub}"));
        assert!(
            text.contains(&format!(".TH corral-{sub} 1")),
            "{sub}: {text}"
        );
        assert!(main.contains(&sub), "corral(1) does not name {sub}");
        let block = bash_block(&bash, &sub);
        for flag in long_flags(&sub) {
            // roff escapes each '-' of an option as '\-'.
            let roff = format!("\\-\\-{}", flag.replace('-', "\\-"));
            assert!(text.contains(&roff), "corral-{sub}(1) lacks --{flag}");
            assert!(
                block.contains(&format!("--{flag}")),
                "bash: {sub} lacks --{flag}"
            );
            assert!(zsh.contains(&format!("--{flag}")), "zsh lacks --{flag}");
            assert!(fish.contains(&format!("-l {flag}")), "fish lacks --{flag}");
        }
    }
    // Nothing else was written.
    let pages = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(pages, subcommands().len() + 1);
}

/// What bash offers for the words `words` (the last one being completed).
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cur = words.last().unwrap();
    let prev = words[words.len() - 2];
    let prog = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; _corral corral '{cur}' '{prev}'; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1
    );
    let out = Command::new("bash").args(["--norc", "-c", &prog]).output();
    let out = out.expect("bash runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_flags_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("corral.bash");
    std::fs::write(&script, stdout_of(&["completions", "bash"])).unwrap();
    assert_eq!(bash_complete(&script, &["corral", "ru"]), ["run"]);
    assert_eq!(
        bash_complete(&script, &["corral", "run", "--mem"]),
        ["--memory"]
    );
    assert_eq!(
        bash_complete(&script, &["corral", "run", "--backend", ""]),
        ["auto", "cgroup2", "systemd", "cgroup1", "rlimit"]
    );
    let shells = bash_complete(&script, &["corral", "completions", ""]);
    assert!(
        shells.ends_with(&["bash".into(), "zsh".into(), "fish".into()]),
        "{shells:?}"
    );
}
