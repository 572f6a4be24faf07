"""Who is calling: static bearer tokens (AUTH_TOKENS), people signed in by OAuth (OAUTH_ISSUER), and
the tenant each speaks for. The sandbox domain only ever sees the tenant's id."""

from .provider import Authentication, authentication
from .static import BearerTokens, TenantAccess, tenant_id_for
from .tenancy import PreviewAuthorizer, current_tenant

__all__ = ["Authentication", "BearerTokens", "PreviewAuthorizer", "TenantAccess", "authentication", "current_tenant",
           "tenant_id_for"]
