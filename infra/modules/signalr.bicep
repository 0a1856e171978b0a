// Azure SignalR Service in serverless mode for the live page (functions.live): no hub server, the function app
// negotiates (signalRConnectionInfo binding) and pushes (signalR binding / the data-plane REST API) with its
// managed identity. Access keys are off (disableLocalAuth): nothing can sign a token but Entra ID identities.
//
// Role: "SignalR Service Owner", on this resource only. The identity must (1) negotiate: the SignalR extension's
// identity-based connection fetches a short-lived access key to sign client tokens
// (Microsoft.SignalRService/SignalR/auth/accessKey/action) and (2) send to groups and users and add users to
// groups (…/hub/send, …/group/*, …/user/*). SignalR App Server has (1) but no sends; SignalR REST API Owner has
// (2) but not the access key (only clientToken); SignalR Service Owner is the only built-in role with both, and
// Microsoft's Functions binding documentation names it for identity-based connections.

@description('Azure region.')
param location string

@description('SignalR Service name (globally unique, 3-63 characters).')
param signalrName string

@description('SKU: Free_F1 (20 connections, no SLA), Standard_S1 or Premium_P1 (units below).')
@allowed([
  'Free_F1'
  'Standard_S1'
  'Premium_P1'
])
param sku string

@description('Units (1,000 concurrent connections each; Free_F1: 1).')
@minValue(1)
@maxValue(100)
param capacity int

@description('Origins allowed to call the service from a browser (the live page). The client authenticates with an access token, not cookies.')
param allowedOrigins array

@description('Principal id of the function app identity (negotiates and pushes).')
param functionPrincipalId string

@description('Tags for every resource.')
param tags object

var signalrServiceOwnerRoleId = '7e4f1700-ea5a-4f59-8f37-079cfe29dce3'

resource signalr 'Microsoft.SignalRService/signalR@2024-03-01' = {
  name: signalrName
  location: location
  tags: tags
  kind: 'SignalR'
  sku: {
    name: sku
    capacity: sku == 'Free_F1' ? 1 : capacity
  }
  properties: {
    features: [
      {
        flag: 'ServiceMode'
        value: 'Serverless'
      }
      {
        flag: 'EnableConnectivityLogs'
        value: 'True'
      }
    ]
    cors: {
      allowedOrigins: allowedOrigins
    }
    disableLocalAuth: true
    disableAadAuth: false
    publicNetworkAccess: 'Enabled'
    tls: {
      clientCertEnabled: false
    }
  }
}

resource functionOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(signalr.id, functionPrincipalId, signalrServiceOwnerRoleId)
  scope: signalr
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', signalrServiceOwnerRoleId)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output name string = signalr.name
@description('https://<name>.service.signalr.net: AzureSignalRConnectionString__serviceUri (TLS only).')
output serviceUri string = 'https://${signalr.properties.hostName}'
