#!/usr/bin/env node
// A test-only OpenID Provider: panva/oidc-provider (OpenID Certified), on loopback, for
// interoperability tests of the gateway's OIDC login. Never for production use.
//
//   node tests/oidc/provider.mjs [CONFIG]
//
// CONFIG is a path to a JSON file, or the JSON itself (an argument starting with "{");
// without it, the defaults below. When listening, ONE JSON line goes to stdout:
//   {"issuer": "http://127.0.0.1:PORT", "port": PORT, "pid": ..., "kids": {"RS256": ..., ...}, ...}
// Everything after that (oidc-provider notices, errors) goes to stderr; stdout stays quiet.
//
// Configuration (every key optional):
//   host, port                 where to listen (127.0.0.1, 0 = any free port)
//   clients                    oidc-provider client metadata, e.g.
//                              {client_id, client_secret, redirect_uris, post_logout_redirect_uris,
//                               token_endpoint_auth_method: client_secret_basic|client_secret_post|private_key_jwt,
//                               jwks: {keys: [public JWK]}, id_token_signed_response_alg: RS256|ES256|PS256}
//   accounts                   {"alice": {"email": ..., "email_verified": true, "groups": [...], ...}}
//   clock_offset               seconds added to the provider's clock (Date.now): ID tokens from the future
//   groups_in_id_token         false: groups only from userinfo (scope "groups"); true: the "groups" claim
//                              rides with scope "openid", so it is in every ID token (and userinfo)
//   conform_id_token_claims    true (the spec default): when an access token is issued, scope claims
//                              (email, groups, profile) are NOT in the ID token, only at userinfo
//   claims                     extra/overriding entries of oidc-provider's `claims` (scope -> claim names)
//   pkce_required              true: every authorization request must carry an S256 code_challenge
//   ttl                        overrides of oidc-provider's ttl (seconds), e.g. {"IdToken": 60}
//   features                   merged over the features below (e.g. {"revocation": {"enabled": true}})
//   client_auth_methods        the token endpoint's client authentication methods (oidc-provider's
//                              clientAuthMethods), e.g. ["client_secret_basic"]; default: all it offers
//
// Interactions (no devInteractions): GET /interaction/:uid is a form with a login field (the account id)
// and two buttons, "Sign in" (name=action value=sign-in, id=sign-in) and "Cancel" (value=cancel,
// id=cancel). Sign in finishes login AND consent in one step (a Grant of the requested scopes); Cancel
// finishes with error=access_denied. The IdP session cookie stays, so a later authorization in the
// same cookie jar is silent, until the session is ended (RP-initiated logout, "Sign out", id=sign-out).
//
// Test controls (loopback only, no authentication; this is a test fixture):
//   POST /_test/rotate   {"retain": 1}  new RS256/PS256/ES256 keys become the current signing keys;
//                        the previous `retain` generations stay published in the JWKS (0: dropped now).
//                        Done in-process (the provider is rebuilt around the same storage, cookie keys,
//                        issuer and port): sessions, codes and tokens survive.
//   POST /_test/clock    {"offset": 300}  change the clock offset (seconds) at runtime
//   PUT  /_test/accounts/:id  {claims}   add or replace an account
//   GET  /_test/state    issuer, kids, clock offset, account ids
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { promisify } from 'node:util';

// stdout carries exactly one line (the "listening" JSON); everything else goes to stderr.
const writeStdout = process.stdout.write.bind(process.stdout);
for (const method of ['log', 'info', 'debug']) {
  console[method] = console.error;
}

// ------------------------------------------------------------------ configuration
function readConfig(arg) {
  if (!arg) return {};
  const text = arg.trimStart().startsWith('{') ? arg : fs.readFileSync(arg, 'utf8');
  return JSON.parse(text);
}

const config = readConfig(process.argv[2]);

const DEFAULT_CLIENTS = [{
  client_id: 'gateway',
  client_secret: 'gateway-client-secret',
  redirect_uris: ['http://gateway.test/auth/callback'],
  post_logout_redirect_uris: ['http://gateway.test/signed-out'],
  token_endpoint_auth_method: 'client_secret_basic',
  id_token_signed_response_alg: 'RS256',
}];

const DEFAULT_ACCOUNTS = {
  alice: {
    email: 'alice@acme.example',
    email_verified: true,
    name: 'Alice Example',
    preferred_username: 'alice',
    upn: 'alice@acme.example',
    groups: ['sales', 'everyone'],
  },
};

const accounts = new Map(Object.entries(config.accounts ?? DEFAULT_ACCOUNTS));

// ------------------------------------------------------------------ the clock
// Shifted before oidc-provider is imported: it reads time through Date.now() (helpers/epoch_time.js),
// for iat/exp/auth_time of what it issues and for what it checks (client assertions, codes...).
const realNow = Date.now.bind(Date);
let clockOffsetMs = Math.round(Number(config.clock_offset ?? 0) * 1000);
Date.now = () => realNow() + clockOffsetMs;

const { default: Provider, errors } = await import('oidc-provider');

// ------------------------------------------------------------------ signing keys
const generateKeyPair = promisify(crypto.generateKeyPair);
const SIGNING_ALGS = ['RS256', 'PS256', 'ES256'];
let generation = 0;

async function newSigningKeys() {
  generation += 1;
  const keys = [];
  for (const alg of SIGNING_ALGS) {
    const { privateKey } = alg === 'ES256'
      ? await generateKeyPair('ec', { namedCurve: 'P-256' })
      : await generateKeyPair('rsa', { modulusLength: 2048 });
    const kid = `${alg.toLowerCase()}-${generation}-${crypto.randomBytes(4).toString('hex')}`;
    keys.push({ ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' });
  }
  return keys;
}

// Newest generation first: oidc-provider signs with the first key that fits the client's alg.
const generations = [await newSigningKeys()];
const currentKids = () => Object.fromEntries(generations[0].map((k) => [k.alg, k.kid]));

// ------------------------------------------------------------------ claims and accounts
const claims = {
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: ['name', 'given_name', 'family_name', 'preferred_username', 'upn', 'updated_at'],
  groups: ['groups'],
  ...(config.claims ?? {}),
};
if (config.groups_in_id_token) {
  // A claim of the "openid" scope goes into every ID token even with conformIdTokenClaims.
  claims.openid = [...new Set([...claims.openid, 'groups'])];
}

async function findAccount(ctx, id) {
  const stored = accounts.get(id);
  if (!stored) return undefined;
  return {
    accountId: id,
    // oidc-provider filters these by the granted scopes and by where they go (id_token / userinfo).
    async claims() { return { ...stored, sub: id }; },
  };
}

// ------------------------------------------------------------------ pages
const esc = (value) => String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>${esc(title)}</h1>
${body}
</main></body></html>`;
}

function loginPage(uid, details, message) {
  const { params } = details;
  return page('Sign in to the test IdP', `
<p>Client <code id="client-id">${esc(params.client_id)}</code> asks for <code id="scope">${esc(params.scope)}</code>.</p>
${message ? `<p id="error" role="alert">${esc(message)}</p>` : ''}
<form id="idp-login" method="post" action="/interaction/${esc(uid)}" autocomplete="off">
  <label for="login">Account</label>
  <input id="login" name="login" type="text" autofocus value="${esc(params.login_hint)}">
  <button id="sign-in" type="submit" name="action" value="sign-in">Sign in</button>
  <button id="cancel" type="submit" name="action" value="cancel" formnovalidate>Cancel</button>
</form>`);
}

async function logoutSource(ctx, form) {
  ctx.body = page('Sign out of the test IdP', `
${form}
<p>Sign out of ${esc(ctx.host)}${ctx.oidc.client ? ` (from ${esc(ctx.oidc.client.clientId)})` : ''}?</p>
<button id="sign-out" type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>
<button id="stay-signed-in" type="submit" form="op.logoutForm">Stay signed in</button>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<p id="signed-out">You are signed out of the test IdP.</p>');
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Test IdP error', Object.entries(out)
    .map(([k, v]) => `<p><strong>${esc(k)}</strong>: <span class="${esc(k)}">${esc(v)}</span></p>`).join('\n'));
}

// ------------------------------------------------------------------ the provider
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];
let issuer;

function buildProvider() {
  const features = {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
    clientCredentials: { enabled: false },
    introspection: { enabled: false },
    revocation: { enabled: false },
    rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
    ...(config.features ?? {}),
  };
  const provider = new Provider(issuer, {
    clients: config.clients ?? DEFAULT_CLIENTS,
    findAccount,
    claims,
    scopes: ['openid', 'offline_access', ...Object.keys(claims).filter((s) => Array.isArray(claims[s]))],
    conformIdTokenClaims: config.conform_id_token_claims ?? true,
    jwks: { keys: generations.flat() },
    cookies: { keys: cookieKeys },
    features,
    pkce: { required: () => config.pkce_required ?? true },
    ...(config.client_auth_methods ? { clientAuthMethods: config.client_auth_methods } : {}),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    renderError,
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 3600,
      Grant: 14 * 24 * 3600,
      Session: 14 * 24 * 3600,
      RefreshToken: 14 * 24 * 3600,
      ...(config.ttl ?? {}),
    },
  });
  provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err));
  provider.handler = provider.callback();
  return provider;
}

// ------------------------------------------------------------------ interactions
async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

async function finishWithGrant(provider, req, res, details, accountId, withLogin) {
  const { params, prompt } = details;
  let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  if (!grant || grant.accountId !== accountId) {
    grant = new provider.Grant({ accountId, clientId: params.client_id });
  }
  // Everything asked for is granted: this IdP asks no consent questions.
  if (params.scope) grant.addOIDCScope(String(params.scope));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const result = { consent: { grantId: await grant.save() } };
  if (withLogin) result.login = { accountId, remember: true };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

async function interaction(provider, req, res, uid) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    if (err instanceof errors.SessionNotFound) {
      send(res, 400, page('Test IdP error', `<p class="error">${esc(err.error_description || err.message)}</p>`));
      return;
    }
    throw err;
  }
  if (details.uid !== uid) {
    send(res, 400, page('Test IdP error', '<p class="error">interaction mismatch</p>'));
    return;
  }
  if (req.method === 'GET') {
    if (details.prompt.name === 'consent' && details.session?.accountId) {
      // Signed in already, only the grant is missing: granted without asking (silent SSO).
      await finishWithGrant(provider, req, res, details, details.session.accountId, false);
      return;
    }
    send(res, 200, loginPage(uid, details));
    return;
  }
  if (req.method !== 'POST') {
    send(res, 405, 'method not allowed', 'text/plain');
    return;
  }
  const form = await readForm(req);
  if (form.action === 'cancel') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User cancelled the sign-in',
    }, { mergeWithLastSubmission: false });
    return;
  }
  const accountId = String(form.login ?? '').trim();
  if (!accounts.has(accountId)) {
    send(res, 200, loginPage(uid, details, `Unknown account: ${accountId}`));
    return;
  }
  await finishWithGrant(provider, req, res, details, accountId, true);
}

// ------------------------------------------------------------------ test controls
function state() {
  return {
    issuer,
    kids: currentKids(),
    published_kids: generations.flat().map((k) => k.kid),
    clock_offset: clockOffsetMs / 1000,
    accounts: [...accounts.keys()],
  };
}

async function control(req, res, path) {
  const json = (status, body) => send(res, status, JSON.stringify(body), 'application/json');
  const readJson = async () => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const text = Buffer.concat(chunks).toString('utf8').trim();
    return text ? JSON.parse(text) : {};
  };
  if (req.method === 'POST' && path === '/_test/rotate') {
    const { retain = 1 } = await readJson();
    generations.unshift(await newSigningKeys());
    generations.splice(1 + Math.max(0, Number(retain)));
    current = buildProvider();
    json(200, state());
  } else if (req.method === 'POST' && path === '/_test/clock') {
    const { offset = 0 } = await readJson();
    clockOffsetMs = Math.round(Number(offset) * 1000);
    json(200, state());
  } else if (req.method === 'PUT' && path.startsWith('/_test/accounts/')) {
    const id = decodeURIComponent(path.slice('/_test/accounts/'.length));
    accounts.set(id, await readJson());
    json(200, state());
  } else if (req.method === 'GET' && path === '/_test/state') {
    json(200, state());
  } else {
    json(404, { error: 'no such control' });
  }
}

// ------------------------------------------------------------------ the server
let current;

const server = http.createServer((req, res) => {
  const provider = current;
  const { pathname } = new URL(req.url, issuer);
  let work;
  if (pathname.startsWith('/_test/')) {
    work = control(req, res, pathname);
  } else if (pathname.startsWith('/interaction/')) {
    work = interaction(provider, req, res, decodeURIComponent(pathname.slice('/interaction/'.length)));
  } else {
    work = provider.handler(req, res);
  }
  Promise.resolve(work).catch((err) => {
    console.error('test IdP error:', err);
    if (!res.headersSent) send(res, 500, 'internal error', 'text/plain');
    else res.end();
  });
});

const host = config.host ?? '127.0.0.1';
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(config.port ?? 0), host, resolve);
});
const { port } = server.address();
issuer = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
current = buildProvider();

const shutdown = () => {
  server.close();
  server.closeAllConnections();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

writeStdout(`${JSON.stringify({
  issuer,
  port,
  pid: process.pid,
  kids: currentKids(),
  clients: (config.clients ?? DEFAULT_CLIENTS).map((c) => c.client_id),
  clock_offset: clockOffsetMs / 1000,
  oidc_provider: (await import('oidc-provider/package.json', { with: { type: 'json' } })).default.version,
})}\n`);
