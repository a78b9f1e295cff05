"""Site readiness: what tells a user that a new site's images differ from the model's val images
(a two-sample test in the model's feature space, per-image out-of-distribution scores), and
what re-chooses the operating point on a few labeled cases of the site's own (an exact
sensitivity guarantee). The statistics are pure functions (site.statistics); the reference they
compare against travels with the model (contracts.site_reference)."""
