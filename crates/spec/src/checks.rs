//! Checks of single values, shared by the loader and by `bootstrap init` (so a wizard answer
//! is held to the same rules as the plan file). Each returns what a valid value looks like.

use crate::ids::*;

/// A kind of plan value that can be checked on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ProjectId,
    Region,
    AccountId,
    Role,
    ApiService,
    RunServiceName,
    RunJobName,
    SecretId,
    PrefectName,
    BlockName,
    Image,
    Entrypoint,
    ApiUrl,
    Cpu,
    Memory,
}

/// Checks `value` as a `field`. The error says why it is invalid and what would be valid;
/// [`hint`] may add a likely intended value.
pub fn check_field(field: Field, value: &str) -> Result<(), String> {
    match field {
        Field::ProjectId => ProjectId::parse(value).map(drop),
        Field::Region => check_known_region(value),
        Field::AccountId => AccountId::parse(value).map(drop),
        Field::Role => Role::parse(value).map(drop),
        Field::ApiService => ApiService::parse(value).map(drop),
        Field::RunServiceName => RunServiceName::parse(value).map(drop),
        Field::RunJobName => RunJobName::parse(value).map(drop),
        Field::SecretId => SecretId::parse(value).map(drop),
        Field::PrefectName => PrefectName::parse(value).map(drop),
        Field::BlockName => BlockName::parse(value).map(drop),
        Field::Image => ImageRef::parse(value).map(drop),
        Field::Entrypoint => check_entrypoint(value),
        Field::ApiUrl => check_api_url(value),
        Field::Cpu => check_cpu(value),
        Field::Memory => check_memory(value),
    }
}

/// A likely intended value for a rejected one (a close known region, a `roles/` prefix ...).
pub fn hint(field: Field, value: &str) -> Option<String> {
    match field {
        Field::Region => {
            crate::diag::did_you_mean(value, KNOWN_REGIONS).map(|r| format!("did you mean `{r}`?"))
        }
        Field::Role if !value.contains('/') && Role::parse(format!("roles/{value}")).is_ok() => {
            Some(format!("did you mean `roles/{value}`?"))
        }
        Field::ProjectId
        | Field::AccountId
        | Field::RunServiceName
        | Field::RunJobName
        | Field::BlockName
            if value.chars().any(|c| c.is_ascii_uppercase() || c == '_') =>
        {
            let fixed = value.to_ascii_lowercase().replace('_', "-");
            check_field(field, &fixed)
                .is_ok()
                .then(|| format!("did you mean `{fixed}`?"))
        }
        Field::Image if value.chars().any(|c| c.is_ascii_uppercase()) => {
            let fixed = value.to_ascii_lowercase();
            ImageRef::parse(fixed.as_str())
                .is_ok()
                .then(|| format!("image paths are lowercase: `{fixed}`"))
        }
        _ => None,
    }
}

/// A Prefect entrypoint: `path/to/file.py:function`, relative to the project root.
pub fn check_entrypoint(s: &str) -> Result<(), String> {
    const FORM: &str = "an entrypoint has the form `path/to/file.py:function`";
    let Some((path, func)) = s.rsplit_once(':') else {
        return Err(format!("{FORM} (the `:function` part is missing)"));
    };
    if !path.ends_with(".py") || path.len() <= 3 {
        return Err(format!("{FORM} (the path must name a .py file)"));
    }
    if path.chars().any(char::is_whitespace) || path.contains('\\') {
        return Err(format!("{FORM} (no spaces or backslashes in the path)"));
    }
    let ident = |p: &str| {
        p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    // `module.py:Class.method` style names are accepted by Prefect; each part is an identifier.
    if func.is_empty() || !func.split('.').all(ident) {
        return Err(format!("{FORM} (`{func}` is not a Python function name)"));
    }
    Ok(())
}

/// A Prefect API URL: http or https with a host, e.g. `http://127.0.0.1:4200/api` or
/// `https://api.prefect.cloud/api/accounts/<id>/workspaces/<id>`.
pub fn check_api_url(s: &str) -> Result<(), String> {
    const FORM: &str =
        "a Prefect API URL is http(s)://HOST[:PORT]/api, e.g. http://127.0.0.1:4200/api";
    let url = url::Url::parse(s).map_err(|e| format!("{FORM} ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{FORM} (scheme `{}` is not http or https)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{FORM} (the host is missing)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials do not belong in the URL; use `prefect.auth_string` or `prefect.api_key`"
                .into(),
        );
    }
    Ok(())
}

/// Cloud Run CPU: a whole or fractional number of CPUs (`1`, `0.5`, `2`) or millicpu (`1000m`).
pub fn check_cpu(s: &str) -> Result<(), String> {
    let ok = if let Some(milli) = s.strip_suffix('m') {
        !milli.is_empty() && milli.chars().all(|c| c.is_ascii_digit()) && milli != "0"
    } else {
        s.parse::<f64>().is_ok_and(|v| v > 0.0 && v <= 8.0) && !s.starts_with(['+', '-'])
    };
    if ok {
        Ok(())
    } else {
        Err("cpu is a number of CPUs up to 8 (`1`, `2`, `0.5`) or millicpu (`1000m`)".into())
    }
}

/// Cloud Run memory: a number with a unit, e.g. `512Mi`, `2Gi`.
pub fn check_memory(s: &str) -> Result<(), String> {
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let ok = !num.is_empty()
        && num.parse::<u64>().is_ok_and(|n| n > 0)
        && matches!(unit, "Mi" | "Gi" | "M" | "G");
    if ok {
        Ok(())
    } else {
        Err("memory is a number with a unit Mi, Gi, M or G (`512Mi`, `2Gi`)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoints() {
        assert!(check_entrypoint("flows/weather_flow.py:fetch_weather").is_ok());
        assert!(check_entrypoint("flow.py:Flows.run").is_ok());
        for bad in [
            "flows/weather_flow.py",
            "weather.txt:f",
            ".py:f",
            "a.py:",
            "a.py:1f",
            "a.py:f-g",
            "my flows/a.py:f",
        ] {
            assert!(check_entrypoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_urls() {
        assert!(check_api_url("http://127.0.0.1:4200/api").is_ok());
        assert!(check_api_url("https://api.prefect.cloud/api/accounts/a/workspaces/b").is_ok());
        for bad in [
            "127.0.0.1:4200/api",
            "ftp://x/api",
            "not a url",
            "https://u:p@x/api",
        ] {
            assert!(check_api_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_and_memory() {
        for ok in ["1", "0.5", "2", "1000m"] {
            assert!(check_cpu(ok).is_ok(), "{ok}");
        }
        for bad in ["", "0", "m", "-1", "16", "one"] {
            assert!(check_cpu(bad).is_err(), "{bad}");
        }
        for ok in ["512Mi", "2Gi", "1G"] {
            assert!(check_memory(ok).is_ok(), "{ok}");
        }
        for bad in ["", "512", "Mi", "0Mi", "512mb"] {
            assert!(check_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hints() {
        assert_eq!(
            hint(Field::Region, "us-centrl1").as_deref(),
            Some("did you mean `us-central1`?")
        );
        assert_eq!(
            hint(Field::Role, "run.admin").as_deref(),
            Some("did you mean `roles/run.admin`?")
        );
        assert_eq!(
            hint(Field::AccountId, "Prefect_SA_one").as_deref(),
            Some("did you mean `prefect-sa-one`?")
        );
    }
}
