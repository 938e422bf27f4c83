// An OpenID provider for the tests: panva's oidc-provider (OpenID-certified), configured
// from the command line: node provider.mjs <issuer URL> <port> <clients JSON>
// Any user name logs in (its dev interactions) with any password; "alice" is in the group
// "admins", everyone else in "users". Refresh tokens are issued to every client allowed
// the grant, and scope-requested claims go into the ID token.
import Provider from 'oidc-provider';

const [issuer, port, clientsJson, ttl] = process.argv.slice(2);
const clients = JSON.parse(clientsJson);
const provider = new Provider(issuer, {
  clients,
  claims: { openid: ['sub'], email: ['email'], profile: ['preferred_username', 'groups'] },
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: id, email: `${id}@example.com`, preferred_username: id,
      groups: id === 'alice' ? ['admins'] : ['users'],
    }),
  }),
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: { AccessToken: Number(ttl || 3600), IdToken: Number(ttl || 3600) },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  pkce: { required: () => true },
});
provider.proxy = false;
provider.listen(Number(port), issuer.split('//')[1].split(':')[0], () => {
  console.log(`listening ${issuer}`);
});
