//! `--generate-docs DIR`: each binary writes its own man pages and shell
//! completions from its real clap `Command`, so they never drift from `--help`.
//!
//! The option is read before clap parses the command line (and so is in no
//! `--help`, and does not meet repctl's required subcommand): only the exact
//! form `BIN --generate-docs DIR` is taken. `scripts/gen-docs.sh` uses it
//! (and the Debian package of issue 18 is to).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

/// The hidden option.
pub const FLAG: &str = "--generate-docs";

/// When the command line is `BIN --generate-docs DIR`, writes the docs of
/// `cmd` into DIR and returns the exit code; otherwise returns `None` and
/// the binary goes on as usual.
pub fn generate_if_asked(cmd: impl FnOnce() -> clap::Command) -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let [flag, dir] = args.as_slice() else {
        return None;
    };
    if flag.as_os_str() != FLAG {
        return None;
    }
    let cmd = cmd();
    let bin = cmd.get_name().to_owned();
    match generate(cmd, Path::new(dir)) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!(
                "{bin}: error: cannot write the docs into {}: {e}",
                dir.to_string_lossy()
            );
            Some(ExitCode::FAILURE)
        }
    }
}

/// Writes `DIR/man8/BIN.8` (and `BIN-SUB.8` per subcommand) and the
/// completions `DIR/completions/{bash/BIN, zsh/_BIN, fish/BIN.fish}`.
pub fn generate(cmd: clap::Command, dir: &Path) -> io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let man_dir = dir.join("man8");
    fs::create_dir_all(&man_dir).map_err(|e| with_path(e, &man_dir))?;
    write_man_pages(&cmd, &man_dir)?;
    let bin = cmd.get_name().to_owned();
    for (shell, sub, file) in [
        (Shell::Bash, "bash", bin.clone()),
        (Shell::Zsh, "zsh", format!("_{bin}")),
        (Shell::Fish, "fish", format!("{bin}.fish")),
    ] {
        let path = dir.join("completions").join(sub).join(file);
        write_completion(&mut cmd, shell, &path).map_err(|e| with_path(e, &path))?;
    }
    Ok(())
}

/// One page per command, subcommands as `BIN-SUB.8` like git's.
fn write_man_pages(cmd: &clap::Command, dir: &Path) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    let path = dir.join(man.get_filename());
    let mut text = Vec::new();
    man.render(&mut text)?;
    fs::write(&path, text).map_err(|e| with_path(e, &path))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // build() named it `BIN-SUB` (its display name), which Man uses.
        write_man_pages(sub, dir)?;
    }
    Ok(())
}

fn write_completion(cmd: &mut clap::Command, shell: Shell, path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let bin = cmd.get_name().to_owned();
    let mut text = Vec::new();
    clap_complete::generate(shell, cmd, bin, &mut text);
    fs::write(path, text)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", PathBuf::from(path).display()))
}
