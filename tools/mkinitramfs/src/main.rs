//! `zonit-mkinitramfs MANIFEST OUTPUT`: the host tool that builds the
//! appliance's initramfs from a manifest in `initramfs/`,
//! as a gzip-compressed newc archive.
//!
//! Reproducible: the gzip header carries no mtime and no file name, and
//! the archive's mtimes are fixed (0, or `SOURCE_DATE_EPOCH` when set), so
//! the same inputs give the same bytes. Needs no root: device nodes are
//! archive entries. The output is written to a temporary file beside
//! OUTPUT and renamed into place, so a failed build never leaves a
//! truncated archive behind.

use std::error::Error as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use flate2::{Compression, GzBuilder};
use zonit_mkinitramfs as cpio;

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Manifest(#[from] cpio::Error),
    #[error("SOURCE_DATE_EPOCH `{0}` is not a number of seconds that fits in 32 bits")]
    SourceDateEpoch(String),
    #[error("unable to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const USAGE: &str = "usage: zonit-mkinitramfs MANIFEST OUTPUT\n\
    Builds a gzip-compressed newc initramfs from MANIFEST (see initramfs/README.md).\n\
    ${VAR} in LOCATION fields comes from the environment; SOURCE_DATE_EPOCH, if set,\n\
    is the mtime of every entry (default 0).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [manifest, output] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if manifest.starts_with('-') {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    match build(Path::new(manifest), Path::new(output)) {
        Ok(count) => {
            eprintln!("zonit-mkinitramfs: wrote {output} ({count} entries)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The whole chain, once: "what failed: why: deeper why".
            let mut msg = format!("zonit-mkinitramfs: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn build(manifest: &Path, output: &Path) -> Result<usize, Error> {
    let mtime = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s.parse::<u32>().map_err(|_| Error::SourceDateEpoch(s))?,
        Err(_) => 0,
    };
    let entries = cpio::load(manifest)?;
    let mut tmp = output.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = write(&tmp, &entries, mtime).and_then(|()| std::fs::rename(&tmp, output));
    if let Err(source) = result {
        // Best effort: the error that matters is the one being returned.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Write {
            path: output.to_path_buf(),
            source,
        });
    }
    Ok(entries.len())
}

fn write(path: &Path, entries: &[cpio::Entry], mtime: u32) -> std::io::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    // GzBuilder without .mtime()/.filename() writes MTIME = 0 and no name,
    // so the header does not depend on when or where the build ran.
    let gz = GzBuilder::new().write(file, Compression::best());
    let mut w = cpio::Writer::new(gz).with_mtime(mtime);
    for e in entries {
        w.append(e)?;
    }
    let gz = w.finish()?;
    let mut file = gz.finish()?;
    file.flush()?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()
}
