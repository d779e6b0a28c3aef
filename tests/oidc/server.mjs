// A real OAuth 2.0 authorization server (node-oidc-provider) for claimgate's HTTP-route
// credential tests: `client_credentials` as the provider ships it, and RFC 8693 token
// exchange registered through the provider's own grant-type API — the subject token is
// verified against the issuer that minted it (claimgate dev's IdP), and the issued token
// names that subject. Access tokens are JWTs for the resource `https://features.example`.
//
// Environment: PORT; TOKEN_TTL (seconds); SUBJECT_ISSUER (the issuer whose tokens may be
// exchanged). Prints "ready <issuer>" when listening. GET /test/token-requests tells how
// many token requests arrived, per grant type.
import Provider, { errors } from 'oidc-provider';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const ttl = Number(process.env.TOKEN_TTL || 60);
const subjectIssuer = process.env.SUBJECT_ISSUER;
const RESOURCE = 'https://features.example';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'claimgate',
    client_secret: 'claimgate-client-secret',
    grant_types: ['client_credentials', TOKEN_EXCHANGE],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'features:read',
  }],
  scopes: ['features:read'],
  // claims of exchanged tokens (set by the grant below)
  extraTokenClaims: (ctx) => ctx?.exchanged,
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (indicator !== RESOURCE) throw new errors.InvalidTarget();
        return { scope: 'features:read', audience: RESOURCE, accessTokenFormat: 'jwt', accessTokenTTL: ttl };
      },
    },
  },
});

const counts = {};
provider.use(async (ctx, next) => {
  if (ctx.path === '/test/token-requests') {
    ctx.body = counts;
    return;
  }
  if (ctx.path === '/token' && ctx.method === 'POST') {
    await next();
    const grant = ctx.oidc?.params?.grant_type || 'unknown';
    counts[grant] = (counts[grant] || 0) + 1;
    return;
  }
  await next();
});

const subjectKeys = subjectIssuer ? createRemoteJWKSet(new URL(`${subjectIssuer}/jwks`)) : null;

provider.registerGrantType(
  TOKEN_EXCHANGE,
  async (ctx) => {
    const { params, client } = ctx.oidc;
    if (params.subject_token_type !== ACCESS_TOKEN) {
      throw new errors.InvalidRequest('subject_token_type must be an access token');
    }
    let subject;
    try {
      ({ payload: subject } = await jwtVerify(params.subject_token, subjectKeys, { issuer: subjectIssuer }));
    } catch (e) {
      throw new errors.InvalidGrant(`subject_token: ${e.code || e.message}`);
    }
    // An access token of a grant the subject holds, as the provider issues for any flow:
    // its JWT's `sub` is the subject; `act` names claimgate, the party acting (RFC 8693 §4.1).
    const grant = new provider.Grant({ accountId: subject.sub, clientId: client.clientId });
    grant.addResourceScope(RESOURCE, 'features:read');
    const grantId = await grant.save();
    const token = new provider.AccessToken({
      accountId: subject.sub,
      client,
      grantId,
      gty: 'token_exchange',
      scope: 'features:read',
    });
    ctx.exchanged = { act: { sub: client.clientId }, subject_issuer: subject.iss };
    token.resourceServer = {
      audience: RESOURCE, scope: 'features:read', accessTokenFormat: 'jwt', accessTokenTTL: ttl,
    };
    const value = await token.save();
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN,
      token_type: 'Bearer',
      expires_in: token.expiration,
    };
  },
  ['subject_token', 'subject_token_type', 'requested_token_type', 'resource', 'audience', 'scope'],
);

provider.on('server_error', (ctx, err) => console.error('server_error', err));

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
