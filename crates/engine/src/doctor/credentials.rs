//! How doctor names the Google credentials: type, principal, where they were found, the quota
//! project and the impersonation chain, one line each. Built from what discovery read from the
//! file's non-secret fields; no key, refresh token or subject token is ever in it.

use bootstrap_gcp::{CredentialInfo, CredentialKind};

/// The IAM member that needs the roles: the last impersonated account, else the principal
/// when it is a service account or a named user.
pub fn member(info: &CredentialInfo) -> Option<String> {
    if let Some(sa) = info.chain.last() {
        return Some(format!("serviceAccount:{sa}"));
    }
    let id = info.principal.as_str();
    if id.contains(' ') || !id.contains('@') {
        return None;
    }
    Some(if id.ends_with(".gserviceaccount.com") {
        format!("serviceAccount:{id}")
    } else {
        format!("user:{id}")
    })
}

/// The credential's lines, for the `credentials` check's detail.
pub fn describe(info: &CredentialInfo) -> String {
    let kind = match info.kind {
        CredentialKind::ServiceAccount => "service_account (a service-account key)",
        CredentialKind::AuthorizedUser => "authorized_user (a user's refresh token)",
        CredentialKind::ExternalAccount => "external_account (workload identity federation)",
        CredentialKind::ImpersonatedServiceAccount => {
            "impersonated_service_account (impersonation from a file)"
        }
        CredentialKind::MetadataServer => "metadata server (the attached service account)",
    };
    let quota = match &info.quota_project {
        Some(q) => format!("{} (from {})", q.value, q.source),
        None if info.user && info.chain.is_empty() => {
            "none: Service Usage and Resource Manager will refuse a user credential without one \
             (`gcloud auth application-default set-quota-project <project>`)"
                .to_owned()
        }
        None => "none (calls are billed to the service account's project)".to_owned(),
    };
    let chain = if info.chain.is_empty() {
        "none".to_owned()
    } else {
        let mut hops = vec![info.principal.clone()];
        hops.extend(info.chain.iter().cloned());
        hops.join(" -> ")
    };
    format!(
        "type: {kind}\nprincipal: {}\nfound in: {}\nquota project: {quota}\nimpersonation: {chain}",
        info.principal, info.origin
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bootstrap_gcp::Setting;
    use bootstrap_gcp::auth::Origin;

    use super::*;

    fn user() -> CredentialInfo {
        CredentialInfo {
            kind: CredentialKind::AuthorizedUser,
            origin: Origin::GcloudAdc(PathBuf::from(
                "/home/me/.config/gcloud/application_default_credentials.json",
            )),
            principal: "me@example.com".into(),
            user: true,
            chain: Vec::new(),
            quota_project: None,
        }
    }

    #[test]
    fn a_user_without_quota_project_is_told_the_fix() {
        insta::assert_snapshot!(describe(&user()), @r"
        type: authorized_user (a user's refresh token)
        principal: me@example.com
        found in: /home/me/.config/gcloud/application_default_credentials.json (gcloud application-default credentials)
        quota project: none: Service Usage and Resource Manager will refuse a user credential without one (`gcloud auth application-default set-quota-project <project>`)
        impersonation: none
        ");
        assert_eq!(member(&user()).as_deref(), Some("user:me@example.com"));
    }

    #[test]
    fn impersonation_names_the_chain_and_the_acting_account() {
        let info = CredentialInfo {
            chain: vec!["deployer@p-123456.iam.gserviceaccount.com".into()],
            quota_project: Some(Setting {
                value: "billing-1".into(),
                source: "--quota-project".into(),
            }),
            ..user()
        };
        insta::assert_snapshot!(describe(&info), @r"
        type: authorized_user (a user's refresh token)
        principal: me@example.com
        found in: /home/me/.config/gcloud/application_default_credentials.json (gcloud application-default credentials)
        quota project: billing-1 (from --quota-project)
        impersonation: me@example.com -> deployer@p-123456.iam.gserviceaccount.com
        ");
        assert_eq!(
            member(&info).as_deref(),
            Some("serviceAccount:deployer@p-123456.iam.gserviceaccount.com")
        );
    }

    #[test]
    fn a_federated_principal_is_no_iam_member() {
        let info = CredentialInfo {
            kind: CredentialKind::ExternalAccount,
            origin: Origin::EnvVar(PathBuf::from("/tmp/gha-creds.json")),
            principal: "federated identity of //iam.googleapis.com/x (subject token from file /t)"
                .into(),
            user: false,
            chain: Vec::new(),
            quota_project: None,
        };
        assert_eq!(member(&info), None);
        assert!(
            describe(&info)
                .contains("found in: /tmp/gha-creds.json (GOOGLE_APPLICATION_CREDENTIALS)")
        );
    }
}
