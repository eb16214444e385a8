//! `bootstrap init`: asks the guide's questions (or takes them from flags), with defaults from
//! what the machine already knows, and writes a commented plan file.
//!
//! Nothing is written until every answer is in and the plan checks out, and then only by an
//! atomic rename, so Ctrl-C at any point leaves no partial file. No secret is ever asked for or
//! written: the Prefect API key is referenced as `{{ env.PREFECT_API_KEY }}`.

pub mod answers;
pub mod ask;
pub mod machine;
pub mod questions;
pub mod render;
pub mod write;

use std::path::{Path, PathBuf};

pub use answers::{Answers, DeploymentAnswers};
pub use machine::{Locations, MachineDefaults};

/// Answers given on the command line; `None`/`false` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub project: Option<String>,
    pub region: Option<String>,
    pub service_account: Option<String>,
    /// `json` or `none`.
    pub key: Option<String>,
    pub pool: Option<String>,
    /// `cloud-run` or `cloud-run-v2`.
    pub pool_type: Option<String>,
    pub worker_image: Option<String>,
    /// `python` or `embedded`.
    pub worker_runtime: Option<String>,
    pub min_instances: Option<String>,
    pub prefect_api_url: Option<String>,
    /// Reference `PREFECT_API_KEY` even for a server that is not Prefect Cloud.
    pub api_key: bool,
    pub deployment_flow: Option<String>,
    pub deployment_name: Option<String>,
    pub entrypoint: Option<String>,
    pub image: Option<String>,
    pub params: Option<String>,
    pub no_deployment: bool,
    /// Ask nothing: take defaults for what flags do not give, and overwrite.
    pub yes: bool,
    /// Overwrite an existing plan file without asking.
    pub force: bool,
}

/// Why `init` stopped.
#[derive(Debug, thiserror::Error)]
pub enum WizardError {
    #[error("no answer for \"{question}\": pass {flag} (there is no terminal to ask on)")]
    MissingAnswer {
        question: String,
        flag: &'static str,
    },
    #[error("invalid {flag} `{value}`: {reason}")]
    InvalidFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "the default for \"{question}\" (`{value}`, found on this machine) is not valid: {reason}; pass {flag}"
    )]
    InvalidDefault {
        question: String,
        value: String,
        reason: String,
        flag: &'static str,
    },
    #[error("interrupted; no plan file was written")]
    Interrupted,
    #[error("{} already exists; pass --force to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("kept the existing {}; no plan file was written", path.display())]
    Declined { path: PathBuf },
    #[error("the terminal failed")]
    Terminal(#[source] std::io::Error),
    #[error("could not write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the plan does not validate:\n{0}")]
    Invalid(String),
}

/// What `run` did.
#[derive(Debug)]
pub struct Outcome {
    pub path: PathBuf,
    pub text: String,
    /// Whether questions were asked on a terminal (so follow-up offers may be made).
    pub interactive: bool,
}

/// Whether to ask on the terminal: stdin and stderr are terminals and `--yes` was not given.
pub fn should_ask(flags: &Flags) -> bool {
    use std::io::IsTerminal;
    !flags.yes && std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Runs the wizard and writes the plan to `path`.
pub fn run(flags: &Flags, path: &Path, locations: &Locations) -> Result<Outcome, WizardError> {
    let interactive = should_ask(flags);
    let asker = ask::Asker::new(interactive);
    if interactive {
        // Ctrl-C while a Select has hidden the cursor would leave it hidden; put it back.
        // Nothing has been written yet when this can fire (the write is a rename at the end).
        let _ = ctrlc::set_handler(|| {
            let _ = console::Term::stderr().show_cursor();
            eprintln!("\ninterrupted; no plan file was written");
            std::process::exit(130);
        });
    }
    let result = run_with(flags, path, locations, &asker);
    if result.is_err() {
        asker.restore();
    }
    result
}

fn run_with(
    flags: &Flags,
    path: &Path,
    locations: &Locations,
    asker: &ask::Asker,
) -> Result<Outcome, WizardError> {
    let overwrite_ok = flags.force || flags.yes;
    // Fail before any question when there is no one to ask about overwriting.
    if path.exists() && !overwrite_ok && !asker.is_interactive() {
        return Err(WizardError::Exists {
            path: path.to_owned(),
        });
    }
    let defaults = machine::read_defaults(locations);
    if asker.is_interactive() {
        print_intro(&defaults, path);
    }
    let answers = questions::collect(asker, flags, &defaults, &locations.project_dir)?;
    let text = render::render_plan(&answers);
    validate_plan(&text, path).map_err(WizardError::Invalid)?;

    let bold = console::Style::new().bold().for_stderr();
    eprintln!(
        "\n{}\n",
        bold.apply_to(format!("The plan file ({}):", path.display()))
    );
    println!("{text}");
    if path.exists() && !overwrite_ok {
        let question = format!("{} exists. Overwrite it?", path.display());
        if !asker.confirm(&question, false)? {
            return Err(WizardError::Declined {
                path: path.to_owned(),
            });
        }
    }
    write::write_atomically(path, &text).map_err(|source| WizardError::Write {
        path: path.to_owned(),
        source,
    })?;
    let green = console::Style::new().green().for_stderr();
    eprintln!("{} {}", green.apply_to("wrote"), path.display());
    if answers.api_key {
        eprintln!(
            "the plan reads the Prefect API key from PREFECT_API_KEY: set it before plan and apply"
        );
    }
    Ok(Outcome {
        path: path.to_owned(),
        text,
        interactive: asker.is_interactive(),
    })
}

/// Checks a rendered plan with the loader `bootstrap validate` uses, before it is written.
///
/// `PREFECT_API_KEY` is given a stand-in value: the check is about the plan, not about this
/// shell, and the real key is never read.
pub fn validate_plan(text: &str, path: &Path) -> Result<(), String> {
    let env = |name: &str| -> Option<String> {
        if name == "PREFECT_API_KEY" {
            Some("stand-in-for-validation".to_owned())
        } else {
            std::env::var(name).ok()
        }
    };
    let name = path.display().to_string();
    bootstrap_spec::load_str(text, &name, &env)
        .map(drop)
        .map_err(|diags| diags.to_string())
}

fn print_intro(defaults: &MachineDefaults, path: &Path) {
    let dim = console::Style::new().dim().for_stderr();
    eprintln!(
        "This writes {}, a plan for Prefect's Cloud Run worker guide. Press Ctrl-C to stop; nothing is written until the end.",
        path.display()
    );
    let mut found = Vec::new();
    if defaults.gcp_project.is_some() || defaults.gcp_region.is_some() {
        found.push("the active gcloud configuration");
    }
    if defaults.prefect_api_url.is_some() {
        found.push("the Prefect profile");
    }
    if defaults.deployment.is_some() {
        found.push("./prefect.yaml");
    }
    if !found.is_empty() {
        eprintln!(
            "{}",
            dim.apply_to(format!("Defaults from {}.", found.join(", ")))
        );
    }
}
