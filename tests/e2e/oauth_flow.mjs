// Sign in to the MCP server with the official TypeScript SDK's OAuth support, then use a sandbox.
// Usage: node oauth_flow.mjs SERVER_URL REDIRECT_URL
// The SDK discovers everything from the server's 401 (protected resource metadata, then the
// authorization server's metadata), registers itself, and sends the person to sign in: that step is
// printed as {"authorize": URL}, and the test answers on stdin with the URL the provider redirected
// the browser to. Then: create -> execute -> file URL -> destroy, printed as {"result": {...}}.
import readline from 'node:readline';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const [serverUrl, redirectUrl] = process.argv.slice(2);
const stdin = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const saved = {};
const authProvider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return {
      client_name: 'sign-in test (TypeScript SDK)', redirect_uris: [redirectUrl], token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
    };
  },
  clientInformation: () => saved.client,
  saveClientInformation: (client) => { saved.client = client; },
  tokens: () => saved.tokens,
  saveTokens: (tokens) => { saved.tokens = tokens; },
  saveCodeVerifier: (verifier) => { saved.verifier = verifier; },
  codeVerifier: () => saved.verifier,
  redirectToAuthorization: (url) => { console.log(JSON.stringify({ authorize: url.href })); },
};

const transport = () => new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider });
const client = new Client({ name: 'sign-in-test', version: '1.0.0' });
let first = transport();
try {
  await client.connect(first);
  throw new Error('the server let an unauthenticated client in');
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
}
const redirected = new URL((await stdin.next()).value);
await first.finishAuth(redirected.searchParams.get('code'));
await client.connect(transport());

const call = async (name, args) => {
  const result = await client.callTool({ name, arguments: args });
  if (result.isError) throw new Error(`${name}: ${JSON.stringify(result.content)}`);
  return result.structuredContent;
};
const created = await call('create_container', {});
const id = created.container_id;
const ran = await call('execute_command', { container_id: id, command: 'echo signed-in > /tmp/hello.txt; cat /tmp/hello.txt' });
const link = await call('get_file_url', { container_id: id, path: '/tmp/hello.txt' });
const download = await fetch(link.url);
const listed = await call('list_containers', {});
await call('destroy_container', { container_id: id });
console.log(JSON.stringify({
  result: {
    container_id: id, stdout: ran.stdout, exit_code: ran.exit_code, file_status: download.status,
    file_body: await download.text(), listed: listed.containers.map((c) => c.container_id),
    scope: saved.tokens.scope ?? null, client_id: saved.client.client_id,
  },
}));
await client.close();
process.exit(0);
