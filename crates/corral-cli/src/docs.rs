//! `corral completions SHELL` and `corral man --out DIR`: shell completions and man
//! pages generated from the same clap definitions that parse the command line, so they
//! cannot drift from it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, ValueEnum};

/// The shells `corral completions` writes a script for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    /// bash (source it, or install it as /usr/share/bash-completion/completions/corral).
    Bash,
    /// zsh (install it as `_corral` in a directory of `$fpath`).
    Zsh,
    /// fish (install it as ~/.config/fish/completions/corral.fish).
    Fish,
}

/// `corral completions SHELL`
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

/// `corral man --out DIR`
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write `corral.1` and `corral-<subcommand>.1` into (created if
    /// missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: CompletionsArgs) -> Result<u8> {
    let mut cmd = crate::Cli::command();
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // Into a buffer first: clap_complete panics on a failed write, and a closed pipe
    // (`corral completions bash | head`) is no error.
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "corral", &mut buf);
    match std::io::stdout().lock().write_all(&buf) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

/// Writes `corral.1` and one `corral-<subcommand>.1` per visible subcommand into
/// `args.out`, and prints each file's path.
pub fn man(args: ManArgs) -> Result<u8> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let cmd = crate::Cli::command();
    let mut pages = vec![(String::from("corral"), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // The page's title and usage line name the whole command (`corral run`); clap
        // wants `'static` names, and this process ends right after writing the pages.
        let name: &'static str = format!("corral-{}", sub.get_name()).leak();
        let sub = sub
            .clone()
            .name(name)
            .display_name(name)
            .bin_name(format!("corral {}", sub.get_name()))
            .version(env!("CARGO_PKG_VERSION"));
        pages.push((name.to_string(), sub));
    }
    for (name, page) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut buf)
            .with_context(|| format!("rendering {name}(1)"))?;
        let path = args.out.join(format!("{name}.1"));
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(0)
}
