//! Route templates: the low-cardinality names of HTTP spans.
//!
//! Semantic conventions name an HTTP span `"{METHOD} {route}"` only when the route template is
//! known (`http.route` on servers, `url.template` on clients), and `"{METHOD}"` otherwise: a raw
//! path with ids in it would make every span name unique. The agent sees bytes, not the
//! framework's router, so the templates come from the configuration (`--route`, `[[routes]]`).
//! A template is matched against the request's path (never its query) segment by segment; when
//! several match, the one with the most literal segments wins, then the one given first, which
//! is how routers prefer `/users/me` over `/users/{id}`.
//!
//! Placeholders take a whole segment and are written the way the frameworks write them:
//! `{id}` (starlette, FastAPI, aiohttp), `<id>` and `<int:id>` (flask, werkzeug), `:id`; a last
//! segment `{rest:path}`, `<path:rest>` or `*` matches one or more remaining segments.

use std::fmt;

use crate::frames::selection::Glob;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("route {0:?}: a route template starts with '/'")]
    NotAPath(String),
    #[error("route {0:?}: a placeholder must be a whole segment ({{id}}, <id>, <int:id>, :id)")]
    PartialPlaceholder(String),
    #[error("route {0:?}: only the last segment may match the rest of the path")]
    RestNotLast(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// Any one non-empty segment.
    One,
    /// One or more segments, to the end of the path.
    Rest,
}

/// One template, optionally limited to some services.
#[derive(Clone, Debug)]
pub struct RouteTemplate {
    text: String,
    segments: Vec<Segment>,
    services: Vec<Glob>,
}

impl RouteTemplate {
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let Some(path) = text.strip_prefix('/') else { return Err(RouteError::NotAPath(text.to_owned())) };
        let segments = path.split('/').map(|part| segment(text, part)).collect::<Result<Vec<_>, _>>()?;
        if segments.iter().rev().skip(1).any(|s| *s == Segment::Rest) {
            return Err(RouteError::RestNotLast(text.to_owned()));
        }
        Ok(Self { text: text.to_owned(), segments, services: Vec::new() })
    }

    /// Limits the template to services whose name matches one of `services` (globs).
    pub fn for_services(mut self, services: &[String]) -> Self {
        self.services = services.iter().map(|s| Glob::new(s)).collect();
        self
    }

    fn applies_to(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|glob| glob.matches(service))
    }

    fn matches(&self, path: &str) -> bool {
        let Some(path) = path.strip_prefix('/') else { return false };
        let mut parts = path.split('/');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Rest, Some(part)) => return !part.is_empty() || parts.next().is_some(),
                (Segment::One, Some(part)) if !part.is_empty() => {}
                (Segment::Literal(literal), Some(part)) if literal == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }

    fn literal_segments(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count()
    }
}

impl fmt::Display for RouteTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn segment(template: &str, part: &str) -> Result<Segment, RouteError> {
    let braced = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'));
    let angled = part.strip_prefix('<').and_then(|p| p.strip_suffix('>'));
    let segment = match (braced, angled) {
        (Some(inner), _) if inner.ends_with(":path") => Segment::Rest,
        (_, Some(inner)) if inner.starts_with("path:") => Segment::Rest,
        (Some(_), _) | (_, Some(_)) => Segment::One,
        _ if part == "*" => Segment::Rest,
        _ if part.starts_with(':') && part.len() > 1 => Segment::One,
        _ if part.contains(['{', '}', '<', '>']) => return Err(RouteError::PartialPlaceholder(template.to_owned())),
        _ => Segment::Literal(part.to_owned()),
    };
    Ok(segment)
}

/// Every configured template.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    templates: Vec<RouteTemplate>,
}

impl Routes {
    pub fn new(templates: Vec<RouteTemplate>) -> Self {
        Self { templates }
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// The template `service`'s request for `path` was routed by, if one is configured.
    pub fn route_of(&self, service: &str, path: &str) -> Option<&str> {
        let mut best: Option<&RouteTemplate> = None;
        for template in self.templates.iter().filter(|t| t.applies_to(service) && t.matches(path)) {
            if best.is_none_or(|b| template.literal_segments() > b.literal_segments()) {
                best = Some(template);
            }
        }
        best.map(|template| template.text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(texts: &[&str]) -> Routes {
        Routes::new(texts.iter().map(|t| RouteTemplate::parse(t).unwrap()).collect())
    }

    #[test]
    fn placeholders_in_every_framework_spelling_match_one_segment() {
        let routes = routes(&["/items/{item_id}", "/users/<int:user_id>/orders/<order>", "/files/:name"]);
        assert_eq!(routes.route_of("svc", "/items/42"), Some("/items/{item_id}"));
        assert_eq!(routes.route_of("svc", "/users/7/orders/abc"), Some("/users/<int:user_id>/orders/<order>"));
        assert_eq!(routes.route_of("svc", "/files/a.txt"), Some("/files/:name"));
        assert_eq!(routes.route_of("svc", "/items/"), None, "a placeholder needs a non-empty segment");
        assert_eq!(routes.route_of("svc", "/items/42/more"), None);
        assert_eq!(routes.route_of("svc", "/items"), None);
        assert_eq!(routes.route_of("svc", "/other"), None);
    }

    #[test]
    fn rest_placeholders_take_the_remaining_segments() {
        for template in ["/static/{file:path}", "/static/<path:file>", "/static/*"] {
            let routes = routes(&[template]);
            assert_eq!(routes.route_of("svc", "/static/css/site.css"), Some(template));
            assert_eq!(routes.route_of("svc", "/static/a"), Some(template));
            assert_eq!(routes.route_of("svc", "/static/"), None);
            assert_eq!(routes.route_of("svc", "/static"), None);
        }
    }

    #[test]
    fn the_most_literal_template_wins_then_the_first() {
        let routes = routes(&["/users/{id}", "/users/me", "/users/{name}", "/*"]);
        assert_eq!(routes.route_of("svc", "/users/me"), Some("/users/me"));
        assert_eq!(routes.route_of("svc", "/users/12"), Some("/users/{id}"));
        assert_eq!(routes.route_of("svc", "/health"), Some("/*"));
        assert_eq!(routes.route_of("svc", "/"), None, "the root has one empty segment");
        assert_eq!(self::routes(&["/"]).route_of("svc", "/"), Some("/"));
    }

    #[test]
    fn templates_can_be_limited_to_services() {
        let shop = RouteTemplate::parse("/orders/{id}").unwrap().for_services(&["shop-*".into()]);
        let routes = Routes::new(vec![shop]);
        assert_eq!(routes.route_of("shop-api", "/orders/1"), Some("/orders/{id}"));
        assert_eq!(routes.route_of("billing", "/orders/1"), None);
    }

    #[test]
    fn malformed_templates_are_refused_with_the_reason() {
        assert_eq!(RouteTemplate::parse("items/{id}").unwrap_err(), RouteError::NotAPath("items/{id}".into()));
        assert!(matches!(RouteTemplate::parse("/v{n}/items"), Err(RouteError::PartialPlaceholder(_))));
        assert!(matches!(RouteTemplate::parse("/a/*/b"), Err(RouteError::RestNotLast(_))));
        assert!(RouteTemplate::parse("/a/*/b").unwrap_err().to_string().contains("/a/*/b"));
    }
}
