// The function app on Flex Consumption (FC1, Python 3.11) with a user-assigned identity: identity-based
// AzureWebJobsStorage and ServiceBusConnection, code in a blob container read with the identity, one app
// setting per queue (the route's setting), Key Vault references for secrets. Each Service Bus-triggered
// function scales on its own; always-ready instances are set per `function:<name>`.

@description('Azure region.')
param location string

@description('Function app name.')
param functionAppName string

@description('Flex Consumption plan name.')
param planName string

@description('Storage account name (3-24 lowercase letters and digits).')
param storageAccountName string

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Principal id of the user-assigned identity.')
param identityPrincipalId string

@description('Service Bus fully qualified namespace.')
param serviceBusFqdn string

@description('The queues, from queues.json.')
param queues array

@description('Name of the reply queue synchronous answers are sent to (RELAYBUS_REPLY_QUEUE).')
param replyQueueName string

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('Instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Maximum instances per function.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

@description('Always-ready instances keyed by function name (the route name), for example {"slack_events": 1}.')
param alwaysReadyInstances object

@description('Set the Slack settings.')
param enableSlack bool

@description('Set the Teams settings.')
param enableTeams bool

@description('Versionless Key Vault URI of the Slack bot token (xoxb-).')
param slackBotTokenSecretUri string

@description('Slack Web API base URL.')
param slackApiUrl string

@description('Bot (Entra app) id.')
param teamsAppId string

@description('Entra tenant id of the single-tenant bot.')
param teamsTenantId string

@description('Versionless Key Vault URI of the bot client secret.')
param teamsAppPasswordSecretUri string

@description('Several Slack apps (RELAYBUS_SLACK_APPS), each {name, ...}; empty: the single app above.')
param slackApps array

@description('Several Teams bots (RELAYBUS_TEAMS_BOTS), each {name, appId, tenantId}; empty: the single bot above.')
param teamsBots array

@description('Key Vault URI (https://<vault>.vault.azure.net/) holding slack-bot-token-<app> and teams-app-password-<bot>.')
param keyVaultUri string

@description('Tags for every resource.')
param tags object

@description('Bridge a Direct Line bot (handlers/bridge.py, ctx.directline: DIRECTLINE_SECRET).')
param enableDirectLine bool

@description('Key Vault secret URI of the Direct Line channel secret (empty without enableDirectLine).')
param directLineSecretUri string

@description('Direct Line endpoint (DIRECTLINE_BASE_URL).')
param directLineBaseUrl string

@description('The Direct Line conversation directory table (DIRECTLINE_TABLE), shared with the worker.')
@minLength(3)
@maxLength(63)
param directLineTableName string

@description('The worker identity\'s principal: it holds the directory\'s leases and watermarks.')
param workerPrincipalId string

@description('Name of the state table (functions.state, RELAYBUS_STATE_TABLE).')
@minLength(3)
@maxLength(63)
param stateTableName string

@description('Set the live update settings (functions.live: SignalR Service serverless, the live page).')
param enableLive bool

@description('https://<name>.service.signalr.net (AzureSignalRConnectionString__serviceUri); empty without enableLive.')
param signalrServiceUri string

@description('Audience of the live page users\' tokens (RELAYBUS_LIVE_AUDIENCE).')
param liveAudience string

@description('Tenant allowlist of the live page (RELAYBUS_LIVE_TENANTS); empty: none.')
param liveTenants string

var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var deploymentContainerName = 'app-package-${take(toLower(functionAppName), 32)}'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource storageOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, storageBlobDataOwnerRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The state store (functions.state): one table, and for the function app the narrowest data role that
// reads, writes and deletes its entities (Storage Table Data Contributor), on that table only. The table
// exists before the app starts, so the app needs no right to create tables.
resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource stateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: stateTableName
}

// The Direct Line conversation directory (worker/directline/table.py): the function app registers the
// conversations it starts, the worker replicas hold their leases and watermarks; both may use its entities only.
resource directLineTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = if (enableDirectLine) {
  parent: tableService
  name: directLineTableName
}

resource directLineTableFunction 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (enableDirectLine) {
  name: guid(directLineTable.id, identityPrincipalId, storageTableDataContributorRoleId)
  scope: directLineTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource directLineTableWorker 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (enableDirectLine) {
  name: guid(directLineTable.id, workerPrincipalId, storageTableDataContributorRoleId)
  scope: directLineTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: workerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource stateTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(stateTable.id, identityPrincipalId, storageTableDataContributorRoleId)
  scope: stateTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

var baseSettings = [
  {
    name: 'AzureWebJobsStorage__accountName'
    value: storage.name
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsightsConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }
  {
    name: 'ServiceBusConnection__fullyQualifiedNamespace'
    value: serviceBusFqdn
  }
  {
    name: 'ServiceBusConnection__credential'
    value: 'managedidentity'
  }
  {
    name: 'ServiceBusConnection__clientId'
    value: identityClientId
  }
]

var queueSettings = [
  for queue in queues: {
    name: queue.appSetting
    value: queue.name
  }
]

var replySettings = [
  {
    name: 'RELAYBUS_REPLY_QUEUE'
    value: replyQueueName
  }
]

var slackSettings = enableSlack
  ? [
      {
        name: 'SLACK_API_URL'
        value: slackApiUrl
      }
    ]
  : []

var slackBotTokenSettings = enableSlack && empty(slackApps)
  ? [
      {
        name: 'SLACK_BOT_TOKEN'
        value: '@Microsoft.KeyVault(SecretUri=${slackBotTokenSecretUri})'
      }
    ]
  : []

var directLineSettings = enableDirectLine
  ? [
      {
        name: 'DIRECTLINE_SECRET'
        value: '@Microsoft.KeyVault(SecretUri=${directLineSecretUri})'
      }
      {
        name: 'DIRECTLINE_BASE_URL'
        value: directLineBaseUrl
      }
      {
        name: 'DIRECTLINE_STORE'
        value: 'table'
      }
      {
        name: 'DIRECTLINE_TABLE_ENDPOINT'
        value: storage.properties.primaryEndpoints.table
      }
      {
        name: 'DIRECTLINE_TABLE'
        value: directLineTableName
      }
      {
        name: 'DIRECTLINE_TABLE_CLIENT_ID'
        value: identityClientId
      }
    ]
  : []

var teamsSettings = enableTeams && empty(teamsBots)
  ? [
      {
        name: 'TEAMS_APP_ID'
        value: teamsAppId
      }
      {
        name: 'TEAMS_TENANT_ID'
        value: teamsTenantId
      }
      {
        name: 'TEAMS_APP_PASSWORD'
        value: '@Microsoft.KeyVault(SecretUri=${teamsAppPasswordSecretUri})'
      }
    ]
  : []

// Several apps (shared/apps.py): the list settings and one Key Vault reference per app.
var slackAppNames = [for app in slackApps: app.name]
var teamsBotNames = [for bot in teamsBots: bot.name]

var appListSettings = concat(
  empty(slackApps)
    ? []
    : [
        {
          name: 'RELAYBUS_SLACK_APPS'
          value: join(slackAppNames, ',')
        }
      ],
  empty(teamsBots)
    ? []
    : [
        {
          name: 'RELAYBUS_TEAMS_BOTS'
          value: join(teamsBotNames, ',')
        }
      ]
)

var slackAppBotTokenSettings = [
  for app in slackApps: {
    name: 'SLACK_BOT_TOKEN__${toUpper(replace(app.name, '-', '_'))}'
    value: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/slack-bot-token-${replace(app.name, '_', '-')})'
  }
]

var teamsBotIdSettings = [
  for bot in teamsBots: {
    name: 'TEAMS_APP_ID__${toUpper(replace(bot.name, '-', '_'))}'
    value: bot.appId
  }
]

var teamsBotTenantSettings = [
  for bot in teamsBots: {
    name: 'TEAMS_TENANT_ID__${toUpper(replace(bot.name, '-', '_'))}'
    value: bot.tenantId
  }
]

var teamsBotPasswordSettings = [
  for bot in teamsBots: {
    name: 'TEAMS_APP_PASSWORD__${toUpper(replace(bot.name, '-', '_'))}'
    value: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/teams-app-password-${replace(bot.name, '_', '-')})'
  }
]

var appSettings = concat(
  appListSettings,
  slackAppBotTokenSettings,
  teamsBotIdSettings,
  teamsBotTenantSettings,
  teamsBotPasswordSettings
)

var stateSettings = [
  {
    name: 'RELAYBUS_STATE_TABLE_ENDPOINT'
    value: storage.properties.primaryEndpoints.table
  }
  {
    name: 'RELAYBUS_STATE_TABLE'
    value: stateTable.name
  }
  {
    name: 'RELAYBUS_STATE_CLIENT_ID'
    value: identityClientId
  }
]

// The SignalR extension's identity-based connection (AzureSignalRConnectionString__*), which functions.live reads
// too for its pushes: never a connection string (the service has access keys disabled).
var liveSettings = enableLive
  ? concat(
      [
        {
          name: 'AzureSignalRConnectionString__serviceUri'
          value: signalrServiceUri
        }
        {
          name: 'AzureSignalRConnectionString__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureSignalRConnectionString__clientId'
          value: identityClientId
        }
        {
          name: 'RELAYBUS_LIVE_HUB'
          value: 'relaybus'
        }
        {
          name: 'RELAYBUS_LIVE_AUDIENCE'
          value: liveAudience
        }
      ],
      empty(liveTenants)
        ? []
        : [
            {
              name: 'RELAYBUS_LIVE_TENANTS'
              value: liveTenants
            }
          ]
    )
  : []

var alwaysReady = [
  for item in items(alwaysReadyInstances): {
    name: 'function:${item.key}'
    instanceCount: item.value
  }
]

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      appSettings: concat(liveSettings, baseSettings, queueSettings, replySettings, slackSettings, slackBotTokenSettings, teamsSettings, appSettings, directLineSettings, stateSettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        alwaysReady: alwaysReady
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    deploymentContainer
    storageOwner
    stateTableContributor
  ]
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
output tableEndpoint string = storage.properties.primaryEndpoints.table
