//! Asking one question: from its flag, else on the terminal, else from its default.
//!
//! In batch mode (`--yes`, or no terminal) nothing is asked: a flag wins, then the default, and
//! a question with neither fails naming the flag to pass. On a terminal, a question whose flag
//! was given is not asked; the others are asked with their default, and an invalid answer is
//! rejected with its reason and asked again.

use console::Term;
use dialoguer::theme::ColorfulTheme;
use dialoguer::{Confirm, Input, Select};

use crate::WizardError;

/// How answers are obtained.
pub struct Asker {
    interactive: bool,
    theme: ColorfulTheme,
    term: Term,
}

/// One choice of a [`Asker::choose`] question: what the user sees and the value it stands for.
pub struct Choice<'a> {
    pub label: &'a str,
    pub value: &'a str,
}

impl Asker {
    /// `interactive`: ask on the terminal (stderr) for what flags do not answer.
    pub fn new(interactive: bool) -> Self {
        Self {
            interactive,
            theme: ColorfulTheme::default(),
            term: Term::stderr(),
        }
    }

    /// Whether questions are asked on a terminal.
    pub fn is_interactive(&self) -> bool {
        self.interactive
    }

    /// A free-text question checked by `parse`.
    pub fn text<T>(
        &self,
        prompt: &str,
        flag: &'static str,
        given: Option<&str>,
        default: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, WizardError> {
        if let Some(value) = given {
            return parse(value).map_err(|reason| invalid_flag(flag, value, reason));
        }
        if !self.interactive {
            let value = default.ok_or(WizardError::MissingAnswer {
                question: prompt.to_owned(),
                flag,
            })?;
            return parse(&value).map_err(|reason| WizardError::InvalidDefault {
                question: prompt.to_owned(),
                value,
                reason,
                flag,
            });
        }
        let mut input = Input::<String>::with_theme(&self.theme)
            .with_prompt(prompt)
            .validate_with(|s: &String| parse(s).map(|_| ()));
        if let Some(d) = default {
            input = input.default(d);
        }
        let answer = input.interact_text_on(&self.term).map_err(terminal)?;
        // The validator accepted it, so this parse succeeds; map the error anyway.
        parse(&answer).map_err(|reason| invalid_flag(flag, &answer, reason))
    }

    /// A free-text question whose empty answer means "none".
    pub fn optional_text<T>(
        &self,
        prompt: &str,
        flag: &'static str,
        given: Option<&str>,
        default: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, WizardError> {
        if let Some(value) = given {
            return parse(value)
                .map(Some)
                .map_err(|reason| invalid_flag(flag, value, reason));
        }
        if !self.interactive || default.is_some() {
            return match default {
                None => Ok(None),
                Some(d) => self.text(prompt, flag, None, Some(d), &parse).map(Some),
            };
        }
        let answer = Input::<String>::with_theme(&self.theme)
            .with_prompt(format!("{prompt} (empty for none)"))
            .allow_empty(true)
            .validate_with(|s: &String| {
                if s.trim().is_empty() {
                    Ok(())
                } else {
                    parse(s).map(|_| ())
                }
            })
            .interact_text_on(&self.term)
            .map_err(terminal)?;
        if answer.trim().is_empty() {
            return Ok(None);
        }
        parse(&answer)
            .map(Some)
            .map_err(|reason| invalid_flag(flag, &answer, reason))
    }

    /// A choice among fixed values; `default` is an index into `choices`.
    pub fn choose<T>(
        &self,
        prompt: &str,
        flag: &'static str,
        given: Option<&str>,
        choices: &[Choice<'_>],
        default: usize,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, WizardError> {
        if let Some(value) = given {
            return parse(value).map_err(|reason| invalid_flag(flag, value, reason));
        }
        let index = if self.interactive {
            Select::with_theme(&self.theme)
                .with_prompt(prompt)
                .items(choices.iter().map(|c| c.label))
                .default(default)
                .interact_on(&self.term)
                .map_err(terminal)?
        } else {
            default
        };
        let value = choices.get(index).map_or("", |c| c.value);
        parse(value).map_err(|reason| invalid_flag(flag, value, reason))
    }

    /// A yes/no question with no flag of its own; batch mode takes `default`.
    pub fn confirm(&self, prompt: &str, default: bool) -> Result<bool, WizardError> {
        if !self.interactive {
            return Ok(default);
        }
        Confirm::with_theme(&self.theme)
            .with_prompt(prompt)
            .default(default)
            .interact_on(&self.term)
            .map_err(terminal)
    }

    /// Puts the cursor back (a Select hides it) after an error or an interrupt.
    pub fn restore(&self) {
        if self.interactive {
            let _ = self.term.show_cursor();
        }
    }
}

fn invalid_flag(flag: &'static str, value: &str, reason: String) -> WizardError {
    WizardError::InvalidFlag {
        flag,
        value: value.to_owned(),
        reason,
    }
}

/// Ctrl-C makes console report `Interrupted`; anything else is a terminal failure.
fn terminal(err: dialoguer::Error) -> WizardError {
    let dialoguer::Error::IO(io) = err;
    if io.kind() == std::io::ErrorKind::Interrupted {
        WizardError::Interrupted
    } else {
        WizardError::Terminal(io)
    }
}
