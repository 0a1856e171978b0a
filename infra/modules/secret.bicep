// One Key Vault secret and its readers: Key Vault Secrets User scoped to this secret only.
// The value is written only when given, so a redeploy without it keeps the value set earlier
// (for example with `az keyvault secret set`); the secret must exist before its first deploy.

@description('Name of the vault (RBAC mode).')
param vaultName string

@description('Secret name.')
param secretName string

@description('Secret value; empty keeps the current value.')
@secure()
param value string

@description('Principal ids that may read this secret.')
param readerPrincipalIds array

var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource written 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(value)) {
  parent: vault
  name: secretName
  properties: {
    value: value
    contentType: 'text/plain'
  }
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: secretName
}

resource readers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in readerPrincipalIds: {
    name: guid(secret.id, principalId, keyVaultSecretsUserRoleId)
    scope: secret
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
    dependsOn: [
      written
    ]
  }
]

@description('Versionless secret URI: Key Vault references always resolve the latest version.')
output uri string = '${vault.properties.vaultUri}secrets/${secretName}'
