// Key Vault in RBAC mode. Secrets and their per-secret reader roles are in secret.bicep.

@description('Azure region.')
param location string

@description('Vault name (globally unique, 3-24 characters).')
param vaultName string

@description('Purge protection (cannot be turned off again once on).')
param enablePurgeProtection bool

@description('Tags for every resource.')
param tags object

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: vaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: enablePurgeProtection ? true : null
    publicNetworkAccess: 'Enabled'
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
