// A real authorization server for the sign-in tests: oidc-provider (npm, OpenID Certified),
// configured here, not written here. Usage: node authorization_server.mjs PORT KEYS.json
//   KEYS.json: {"keys": [private JWKs]}, the first one signs (the tests rotate keys by restarting
//   it with a new first key). Prints "ready <issuer>" when it listens.
// Clients: dynamic registration is open (the MCP clients register themselves); "m2m" gets tokens by
// client credentials (the tests' tokens for other resources and scopes); "sandbox-server" is the one
// the MCP server introspects as, and signs people in as when it fronts this provider.
// Sign-in and consent are answered over HTTP by the tests, as JSON:
//   GET  /interaction/<uid>                -> {"prompt": "login" | "consent", ...}
//   POST /interaction/<uid>/login?user=NAME   signs NAME in (any name; the password is not asked)
//   POST /interaction/<uid>/consent           grants what was asked
import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const [port, keysPath] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const jwks = JSON.parse(fs.readFileSync(keysPath, 'utf8'));
const format = process.env.ACCESS_TOKEN_FORMAT || 'jwt';
const callbacks = (process.env.SERVER_REDIRECT_URIS || 'http://127.0.0.1/unused').split(',');

const provider = new Provider(issuer, {
  jwks,
  clients: [
    { client_id: 'm2m', client_secret: 'm2m-secret', grant_types: ['client_credentials'], redirect_uris: [],
      response_types: [] },
    { client_id: 'sandbox-server', client_secret: 'sandbox-server-secret', redirect_uris: callbacks,
      grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'] },
  ],
  scopes: ['openid', 'offline_access', 'email', 'profile', 'sandbox', 'other'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, email: `${id}@example.test`, email_verified: true, name: id }),
  }),
  conformIdTokenClaims: false,  // ID tokens carry the scopes' claims (email), as Google's and most providers' do
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['tests-only-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'sandbox other',
        audience: resource,
        accessTokenTTL: 3600,
        accessTokenFormat: format,
        jwt: { sign: { alg: jwks.keys[0].alg || 'RS256' } },
      }),
    },
  },
  pkce: { required: () => true },
  ttl: { AccessToken: 3600, AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 3600 },
});

async function answer(req, res) {
  const match = req.url.match(/^\/interaction\/([^/?]+)(?:\/(login|consent))?(?:\?(.*))?$/);
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET' && !match[2]) {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ uid: details.uid, prompt: details.prompt.name, params: details.params }));
    return;
  }
  if (match[2] === 'login') {
    const user = new URLSearchParams(match[3] || '').get('user');
    await provider.interactionFinished(req, res, { login: { accountId: user } }, { mergeWithLastSubmission: false });
    return;
  }
  const { prompt: { details: missing }, params, session: { accountId } } = details;
  const grant = details.grantId ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [resource, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(resource, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
http.createServer((req, res) => {
  if (!req.url.startsWith('/interaction/')) return callback(req, res);
  answer(req, res).catch((error) => {
    res.statusCode = 400;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ error: String(error) }));
  });
}).listen(Number(port), '127.0.0.1', () => console.log(`ready ${issuer}`));
