use std::path::Path;
use std::process::Command;

fn main() {
    // The cdylib gets a SONAME, so programs linked against it (meson, pkg-config users)
    // record `libgstqtisocket.so` and find it in the library path, not a build-tree path.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libgstqtisocket.so");
    println!("cargo:rustc-env=QTISOCKET_RELEASE_DATE={}", release_date());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}

/// The plugin's release date (YYYY-MM-DD, UTC): the HEAD commit's date when this is a git
/// checkout of the crate, else `SOURCE_DATE_EPOCH` (reproducible builds), else today.
fn release_date() -> String {
    if let Some(seconds) = head_commit_time() {
        return date_of(seconds);
    }
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        match epoch.trim().parse() {
            Ok(seconds) => return date_of(seconds),
            Err(_) => println!("cargo:warning=SOURCE_DATE_EPOCH={epoch:?} is not a number of seconds; ignored"),
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    date_of(now as i64)
}

/// The committer time of HEAD, if the crate's own directory is the top of a git work tree
/// (not a tarball unpacked inside some other repository) and git runs. Rebuilds when HEAD
/// moves.
fn head_commit_time() -> Option<i64> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").arg("-C").arg(&dir).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let top = git(&["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != Path::new(&dir).canonicalize().ok()? {
        return None;
    }
    let seconds = git(&["log", "-1", "--format=%ct", "HEAD"])?.parse().ok()?;
    // HEAD, the branch it points to, and packed refs (a worktree's refs live in the
    // common git directory: --git-path finds them).
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = Path::new(&dir).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some(seconds)
}

/// YYYY-MM-DD of a Unix time, UTC (days to civil date: H. Hinnant's algorithm).
fn date_of(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
